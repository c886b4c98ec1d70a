"""Renders or lints the amesh Helm chart with Helm's own engine (helm-python-sdk), no helm binary.

    python deploy/render.py [--set key=value ...] [--name amesh] [--namespace istio-system]
        prints the manifests, as `helm template --namespace istio-system amesh deploy/chart/amesh`
    python deploy/render.py --lint [--set ...]
        lints the chart as `helm lint --strict` does: warnings fail too

Run it with the project's venv, which `cargo xtask setup` creates:
`$AMESH_CACHE/venv/bin/python` (AMESH_CACHE defaults to ~/.cache/amesh).
`cargo xtask render-manifests` writes the default rendering to deploy/manifests/amesh.yaml.
"""

import argparse
import os
import re
import sys

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chart", "amesh")

# Helm's install order (pkg/release/util/kind_sorter.go), so the output reads as Helm's does.
KIND_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
]
KIND = re.compile(r"^kind:\s*(\S+)", re.MULTILINE)
# Helm lint severities: 1 info, 2 warning, 3 error. --strict fails on warnings too.
WARNING = 2


def load_sdk():
    try:
        import helm_python
    except ImportError:
        sys.exit(
            f"render.py: helm_python is not importable by {sys.executable}; "
            "run `cargo xtask setup` and use $AMESH_CACHE/venv/bin/python"
        )
    return helm_python


def values_from(sets, helm):
    """Merges each --set expression, later ones winning, as helm's --set does."""
    merged = {}
    for expression in sets:
        merge(merged, helm.parse_set_string(expression))
    return merged


def merge(into, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def documents(rendered):
    """(template path, document) for every non-empty manifest document, in Helm's order."""
    docs = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in re.split(r"^---\s*$", rendered[path], flags=re.MULTILINE):
            body = "\n".join(line.rstrip() for line in doc.strip("\n").splitlines())
            if any(line and not line.lstrip().startswith("#") for line in body.splitlines()):
                docs.append((path, body))

    def rank(item):
        kind = KIND.search(item[1])
        name = kind.group(1) if kind else ""
        return KIND_ORDER.index(name) if name in KIND_ORDER else len(KIND_ORDER)

    return sorted(docs, key=rank)  # stable: template order within a kind


def render(helm, values, name, namespace, sets):
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
    header = (
        f"# The amesh chart (deploy/chart/amesh) rendered as release {name} in namespace "
        f"{namespace}{''.join(f', --set {s}' for s in sets)}.\n"
        "# Generated: do not edit. Regenerate with `cargo xtask render-manifests`.\n"
    )
    return header + "".join(f"---\n# Source: {p}\n{body}\n" for p, body in documents(rendered))


def lint(helm, values, namespace):
    report = helm.lint(CHART, values, strict=True, namespace=namespace)
    failed = bool(report.get("errors"))
    for message in report.get("messages", []):
        severity = message.get("severity", 0)
        failed |= severity >= WARNING
        label = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(severity, "UNKNOWN")
        print(f"[{label}] {message.get('path')}: {message.get('error')}", file=sys.stderr)
    for error in report.get("errors", []):
        print(f"[ERROR] {error}", file=sys.stderr)
    return not failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lint", action="store_true", help="lint strictly instead of rendering")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="amesh", help="release name")
    parser.add_argument("--namespace", default="istio-system", help="release namespace")
    args = parser.parse_args()
    helm = load_sdk()
    try:
        values = values_from(args.set, helm)
        if args.lint:
            if not lint(helm, values, args.namespace):
                sys.exit("render.py: the chart fails `helm lint --strict`")
            print("render.py: lint --strict: no warnings, no errors", file=sys.stderr)
        else:
            sys.stdout.write(render(helm, values, args.name, args.namespace, args.set))
    except helm.HelmError as e:
        sys.exit(f"render.py: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
