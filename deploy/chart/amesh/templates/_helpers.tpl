{{/*
Shared pieces of the amesh chart's templates.
*/}}

{{/* The image tag: image.tag, or the chart's appVersion. */}}
{{- define "amesh.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* An image reference: include "amesh.image" (list . "ztunnel") */}}
{{- define "amesh.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/%s:%s" $root.Values.image.hub (index . 1) (include "amesh.tag" $root) -}}
{{- end -}}

{{/* Labels every object carries, with a selector's labels or "amesh.instance". */}}
{{- define "amesh.labels" -}}
app.kubernetes.io/part-of: amesh
app.kubernetes.io/version: {{ include "amesh.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The release's label, for objects without a selector. */}}
{{- define "amesh.instance" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of the DaemonSet's pods. */}}
{{- define "amesh.node.selector" -}}
app: amesh-node
app.kubernetes.io/name: amesh-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of the control plane's pods. */}}
{{- define "amesh.controlPlane.selector" -}}
app: istiod
istio: pilot
app.kubernetes.io/name: istiod
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The control plane's host name, as its serving certificate names it. */}}
{{- define "amesh.controlPlane.host" -}}
{{- printf "istiod.%s.svc" .Release.Namespace -}}
{{- end -}}

{{/* The xDS address ztunnel dials. */}}
{{- define "amesh.xdsAddress" -}}
{{- .Values.ztunnel.xdsAddress | default (printf "%s:15012" (include "amesh.controlPlane.host" .)) -}}
{{- end -}}

{{/* The pod spec's imagePullSecrets (call it only when image.pullSecrets is set). */}}
{{- define "amesh.pullSecrets" -}}
imagePullSecrets:
{{- range .Values.image.pullSecrets }}
  - name: {{ . }}
{{- end }}
{{- end -}}
