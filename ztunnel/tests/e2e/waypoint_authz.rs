//! AuthorizationPolicy at the waypoint, with real curl requests from an enrolled pod: a DENY
//! on a path, an ALLOW on methods and on a header, an AUDIT that only counts, and a policy
//! from the source's principal; each denial is 403 `RBAC: access denied`, counted in Istio's
//! metrics and logged with the deciding policy.

use crate::{
    support::*,
    waypoint::{curl, metrics, start_bound, waypoint_requests, xds_edit},
};
use amesh_testbed::mesh::{PodSpec, VIP};

fn specs() -> Vec<PodSpec> {
    vec![
        pod("a", "shop", "node1"),
        pod("z", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        crate::waypoint::WP,
    ]
}

const POLICIES: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/a"]}}]
    to: [{operation: {methods: [GET]}}]
  - to: [{operation: {methods: [POST], paths: ["/orders/{*}"]}}]
    when: [{key: "request.headers[x-token]", values: [letmein]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited"]}}]}]
"#;

fn curl_with(mesh: &Mesh, from: &str, args: &[&str], url: &str) -> (u16, String) {
    let out = mesh
        .pod(from)
        .command("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn authorization_policies_are_enforced_per_request_at_the_waypoint() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + POLICIES);
    let waypoint = start_bound(&mut mesh);
    let _apps = mesh.apps(&["b"]);
    let url = |path: &str| format!("http://{VIP}{path}");
    let log = || waypoint.log();

    // ALLOW: a's GETs.
    let (status, body) = curl(&mesh, "a", &url("/items"));
    assert_eq!(status, 200, "{body}\n{}", log());
    // DENY wins over ALLOW.
    let (status, body) = curl(&mesh, "a", &url("/admin/users"));
    assert_eq!(
        (status, body.trim()),
        (403, "RBAC: access denied"),
        "{}",
        log()
    );
    // No ALLOW rule matches: z is not a reader, PUT is no one's, POST needs the header and
    // an /orders/<id> path.
    let denied = [
        ("z", vec![], "/items"),
        ("a", vec!["-X", "PUT"], "/items"),
        ("a", vec!["-X", "POST"], "/orders/7"),
        (
            "a",
            vec!["-X", "POST", "-H", "x-token: letmein"],
            "/orders/7/lines",
        ),
    ];
    for (from, args, path) in &denied {
        let (status, body) = curl_with(&mesh, from, args, &url(path));
        assert_eq!(
            (status, body.trim()),
            (403, "RBAC: access denied"),
            "{from} {args:?} {path}\n{}",
            log()
        );
    }
    let (status, body) = curl_with(
        &mesh,
        "z",
        &["-X", "POST", "-H", "x-token: letmein"],
        &url("/orders/7"),
    );
    assert_eq!(
        status,
        200,
        "the header rule allows anyone: {body}\n{}",
        log()
    );
    // AUDIT: allowed, and counted.
    let (status, _) = curl(&mesh, "a", &url("/audited"));
    assert_eq!(status, 200);

    let m = metrics(&waypoint);
    assert_eq!(
        waypoint_requests(&m, &["response_code=\"403\"", "reporter=\"waypoint\""]),
        5.0,
        "every denial counted: {m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("amesh_waypoint_policy_audit_total{policy=\"shop/watch\"} 1")),
        "{m}"
    );
    assert!(
        log()
            .lines()
            .any(|l| l.contains("request denied by policy") && l.contains("shop/no-admin")),
        "the deciding policy is logged:\n{}",
        log()
    );
    assert!(
        log().lines().any(
            |l| l.contains("request denied by policy") && l.contains("no ALLOW policy matched")
        ),
        "{}",
        log()
    );
}

/// A directory served over real HTTPS: Python's `http.server` on loopback behind the test
/// bed's TLS front (a CA made for the run).
struct JwksServer {
    _http: amesh_testbed::daemon::Daemon,
    front: amesh_testbed::tls_front::TlsFront,
}

fn jwks_server(mesh: &Mesh, dir: &std::path::Path, ca_file: &std::path::Path) -> JwksServer {
    // http.server says its port on stdout; the daemon's log is stderr.
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "exec /usr/bin/python3 -u -m http.server 0 --bind 127.0.0.1 --directory \"$0\" 1>&2",
    ])
    .arg(dir);
    let mut http = amesh_testbed::daemon::Daemon::spawn(
        cmd,
        mesh.dir.join("jwks-http.log"),
        "the JWKS HTTP server",
    )
    .expect("start http.server");
    let port: u16 = http
        .wait_log(
            "http.server listening",
            std::time::Duration::from_secs(10),
            |log| {
                log.split("port ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
        )
        .expect("http.server's port");
    let front = amesh_testbed::tls_front::TlsFront::start(([127, 0, 0, 1], port).into(), ca_file)
        .expect("the TLS front");
    JwksServer { _http: http, front }
}

#[test]
fn request_authentication_validates_tokens_and_policies_judge_the_end_user() {
    use amesh_testbed::jwt::Issuer;
    use serde_json::json;
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    // Issuer A's keys inline; issuer B's at a jwksUri the control plane fetches over HTTPS.
    let a = Issuer::new("https://a.issuer.test", "a1");
    let b = Issuer::new("https://b.issuer.test", "b1");
    let keys_dir = mesh.dir.join("jwks");
    std::fs::create_dir_all(&keys_dir).expect("jwks dir");
    std::fs::write(keys_dir.join("b.json"), b.jwks()).expect("b's keys");
    let ca_file = mesh.dir.join("jwks-ca.pem");
    let server = jwks_server(&mesh, &keys_dir, &ca_file);
    let objects = format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  jwtRules:
  - issuer: https://a.issuer.test
    jwks: '{jwks_a}'
  - issuer: https://b.issuer.test
    jwksUri: {uri}/b.json
    audiences: [shop]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: end-users, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  rules:
  - to: [{{operation: {{paths: [/public]}}}}]
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: [/private]}}}}]
  - to: [{{operation: {{paths: [/admins]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admin]}}]
"#,
        jwks_a = a.jwks(),
        uri = server.front.url(),
    );
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + &objects);
    mesh.control_plane_source
        .extend(["--jwks-ca-file".to_string(), ca_file.display().to_string()]);
    let waypoint = start_bound(&mut mesh);
    let _apps = mesh.apps(&["b"]);
    let url = |path: &str| format!("http://{VIP}{path}");
    let log = || {
        format!(
            "waypoint:\n{}\ncontrol plane:\n{}",
            waypoint.log(),
            mesh.control_plane
                .as_ref()
                .map(|c| c.log())
                .unwrap_or_default()
        )
    };
    let with = |token: &str, path: &str| {
        let header = format!("authorization: Bearer {token}");
        curl_with(&mesh, "a", &["-H", &header], &url(path))
    };
    let dev = a.token(json!({"sub": "alice", "groups": ["dev"]}));
    let admin = a.token(json!({"sub": "root", "groups": ["admin", "dev"]}));
    let b_ok = b.token(json!({"sub": "carol", "aud": "shop"}));
    let b_wrong_aud = b.token(json!({"sub": "carol", "aud": "billing"}));
    let forged = Issuer::new("https://a.issuer.test", "a1").token(json!({"sub": "mallory"}));

    assert_eq!(
        curl(&mesh, "a", &url("/public")).0,
        200,
        "no token needed: {}",
        log()
    );
    let (status, body) = with(&dev, "/private");
    assert_eq!(
        status,
        200,
        "a valid token (inline keys): {body}\n{}",
        log()
    );
    let (status, body) = with(&b_ok, "/private");
    assert_eq!(
        status,
        200,
        "a valid token (keys fetched over HTTPS): {body}\n{}",
        log()
    );
    for (what, token) in [("forged", &forged), ("wrong audience", &b_wrong_aud)] {
        let (status, body) = with(token, "/private");
        assert_eq!(
            (status, body.trim()),
            (401, "Jwt verification fails"),
            "{what}\n{}",
            log()
        );
    }
    let (status, body) = curl(&mesh, "a", &url("/private"));
    assert_eq!(
        (status, body.trim()),
        (403, "RBAC: access denied"),
        "no token: RequestAuthentication passes it, requestPrincipals [*] refuses it"
    );
    assert_eq!(with(&dev, "/admins").0, 403, "a claim it lacks");
    assert_eq!(with(&admin, "/admins").0, 200, "a claim it has: {}", log());
    assert!(
        waypoint.log().contains("Audiences in Jwt are not allowed"),
        "the reason is logged: {}",
        log()
    );
}

#[test]
fn require_waypoint_refuses_what_bypasses_the_waypoint_and_is_off_by_default() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    // The waypoint serves services only: pod-addressed traffic goes direct, around it.
    xds_edit(&mesh, |t| {
        crate::waypoint::bind_shop(t).replace(
            "istio.io/waypoint-for: all",
            "istio.io/waypoint-for: service",
        )
    });
    let waypoint = start_bound(&mut mesh);
    let _apps = mesh.apps(&["b"]);
    let pod_ip = mesh.v4("b", APP_PORT);
    let vip: std::net::SocketAddr = format!("{VIP}:80").parse().unwrap();
    // Off by default: the pod's address reaches it without the waypoint.
    let direct = mesh.connect_one("a", pod_ip);
    assert!(direct.reply.contains("served-by=b-app"), "{direct:?}");
    // On: only the waypoint's identity may connect to the Service's endpoints.
    xds_edit(&mesh, |t| {
        t.replace(
            "metadata: {name: web, namespace: shop}",
            "metadata: {name: web, namespace: shop, annotations: {amesh.io/require-waypoint: \"true\"}}",
        )
    });
    let reason = "denied by shop/amesh-require-waypoint-web";
    amesh_testbed::eventually(
        "the requirement in force",
        std::time::Duration::from_secs(20),
        || {
            let r = mesh
                .connect("a", &["--timeout-ms", "2000"], &[pod_ip])
                .remove(0);
            r.outcome.is_err().then_some(()).ok_or(format!("{r:?}"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    refused_because(&mesh, "a", pod_ip, "node2", reason);
    // Through the waypoint it still works.
    let (status, body) = curl(&mesh, "a", &format!("http://{vip}/ok"));
    assert_eq!(status, 200, "{body}\n{}", waypoint.log());
}

/// A bound mesh with app `b` behind service `web`, the `objects` added to the source, the
/// control plane reading `mesh_config`, and the external authorizer `script` (from
/// `tests/extauthz/`) serving `port` in pod `c`.
fn with_authorizer(
    objects: &str,
    mesh_config: &str,
    script: &str,
    port: &str,
) -> (
    Mesh,
    amesh_testbed::waypoint::WaypointProcess,
    amesh_testbed::PodProcess,
    Vec<amesh_testbed::PodProcess>,
) {
    amesh_testbed::require_root();
    let specs = vec![
        pod("a", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        pod("c", "shop", "node2"),
        crate::waypoint::WP,
    ];
    let mut mesh = Mesh::try_build(&specs).expect("build the mesh");
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + objects);
    let path = mesh.dir.join("mesh.yaml");
    std::fs::write(&path, mesh_config).expect("mesh config");
    mesh.control_plane_source
        .extend(["--mesh-config".to_string(), path.display().to_string()]);
    let waypoint = start_bound(&mut mesh);
    let apps = mesh.apps(&["b"]);
    let mut cmd = mesh.pod("c").command("/usr/bin/python3");
    cmd.arg(format!(
        "{}/../tests/extauthz/{script}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg(port);
    let authorizer = mesh.pod("c").spawn(cmd).expect("the authorizer");
    assert_eq!(
        authorizer
            .next_line(std::time::Duration::from_secs(10))
            .as_deref(),
        Some("ready"),
        "{}",
        authorizer.stderr()
    );
    (mesh, waypoint, authorizer, apps)
}

#[test]
fn custom_policies_ask_the_external_authorizer_first() {
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: shop}
spec: {clusterIP: 10.96.0.19, selector: {app: c}, ports: [{name: http, port: 8000, targetPort: 8000}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules: [{to: [{operation: {paths: ["/guarded/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: CUSTOM
  provider: {name: nowhere}
  rules: [{to: [{operation: {paths: ["/broken/*"]}}]}]
"#;
    let (mesh, waypoint, authorizer, _app) = with_authorizer(
        objects,
        "extensionProviders:\n\
         - name: sample-ext-authz-http\n  envoyExtAuthzHttp:\n    service: ext-authz.shop.svc.cluster.local\n    port: 8000\n    timeout: 2s\n    includeRequestHeadersInCheck: [x-ext-authz, x-ext-authz-user]\n    headersToUpstreamOnAllow: [x-user]\n    headersToDownstreamOnDeny: [x-ext-authz-check-result, content-type]\n\
         - name: nowhere\n  envoyExtAuthzHttp: {service: ghost.shop.svc.cluster.local, port: 80, statusOnError: \"503\"}\n",
        "ext_authz.py",
        "8000",
    );
    let url = |path: &str| format!("http://{VIP}{path}");
    let log = || waypoint.log();

    // Allowed by the authorizer: the header it sets reaches the app.
    let (status, body) = curl_with(
        &mesh,
        "a",
        &["-H", "x-ext-authz: allow", "-H", "x-ext-authz-user: dana"],
        &url("/guarded/page"),
    );
    assert_eq!(status, 200, "{body}\n{}", log());
    assert!(
        body.contains("x-user=dana"),
        "the authorizer's header went upstream: {body}"
    );
    // Denied: the authorizer's status, body and listed header reach the client.
    let out = mesh
        .pod("a")
        .command("curl")
        .args(["-sS", "-i", "--max-time", "10", &url("/guarded/page")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 403"), "{text}\n{}", log());
    assert!(text.contains("x-ext-authz-check-result: denied"), "{text}");
    assert!(
        text.contains("denied by ext_authz for /guarded/page"),
        "{text}"
    );
    // Not matched by the CUSTOM rule: never sent to the authorizer. (Its two checks so
    // far are logged before it answers; its stderr is collected by a thread.)
    amesh_testbed::eventually(
        "the authorizer logging both checks",
        std::time::Duration::from_secs(5),
        || {
            let checks = authorizer.stderr();
            if checks.matches("check GET /guarded/page").count() == 2 {
                Ok(())
            } else {
                Err(checks)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let checks_before = authorizer.stderr().matches("check ").count();
    assert_eq!(curl(&mesh, "a", &url("/open")).0, 200);
    assert_eq!(
        authorizer.stderr().matches("check ").count(),
        checks_before,
        "no check for a path the policy does not match"
    );
    // An authorizer that cannot be reached: statusOnError, not a pass.
    assert_eq!(curl(&mesh, "a", &url("/broken/x")).0, 503, "{}", log());
    let m = metrics(&waypoint);
    assert!(
        waypoint_requests(&m, &["response_code=\"403\"", "response_flags=\"UAEX\""]) >= 1.0,
        "{m}"
    );
    assert!(
        log().contains("request denied by policy (CUSTOM)"),
        "{}",
        log()
    );
}

#[test]
fn custom_policies_ask_a_grpc_authorizer_with_the_request_body() {
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: shop}
spec: {clusterIP: 10.96.0.19, selector: {app: c}, ports: [{name: grpc, port: 9000, targetPort: 9000, appProtocol: grpc}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: sample-ext-authz-grpc}
  rules: [{to: [{operation: {paths: ["/guarded/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: strict, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: strict-body}
  rules: [{to: [{operation: {paths: ["/strict/*"]}}]}]
"#;
    let (mesh, waypoint, authorizer, _app) = with_authorizer(
        objects,
        "extensionProviders:\n\
         - name: sample-ext-authz-grpc\n  envoyExtAuthzGrpc:\n    service: ext-authz.shop.svc.cluster.local\n    port: 9000\n    timeout: 2s\n    includeRequestBodyInCheck: {maxRequestBytes: 16, allowPartialMessage: true}\n\
         - name: strict-body\n  envoyExtAuthzHttp:\n    service: ghost.shop.svc.cluster.local\n    port: 80\n    statusOnError: \"503\"\n    includeRequestBodyInCheck: {maxRequestBytes: 4}\n",
        "ext_authz_grpc.py",
        "9000",
    );
    let url = |path: &str| format!("http://{VIP}{path}");
    let log = || waypoint.log();
    let curl_i = |args: &[&str], path: &str| {
        let out = mesh
            .pod("a")
            .command("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(args)
            .arg(url(path))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };

    // Allowed over gRPC: the authorizer's header goes upstream, the header it removes does
    // not, and the header it adds for the client comes back.
    let text = curl_i(
        &["-H", "x-ext-authz: allow", "-H", "x-ext-authz-user: dana"],
        "/guarded/page",
    );
    assert!(text.starts_with("http/1.1 200"), "{text}\n{}", log());
    assert!(text.contains("x-user=dana"), "{text}");
    assert!(
        !text.contains("x-ext-authz=allow"),
        "removed upstream: {text}"
    );
    assert!(text.contains("x-ext-authz-check-result: allowed"), "{text}");
    // The check carried the caller's identity, as the waypoint received it over HBONE.
    // (The authorizer logs before it answers; its stderr is collected by a thread.)
    let logged = |what: &str| {
        amesh_testbed::eventually(
            format!("the authorizer logging {what:?}"),
            std::time::Duration::from_secs(5),
            || {
                let checks = authorizer.stderr();
                if checks.contains(what) {
                    Ok(())
                } else {
                    Err(checks)
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    logged(
        "check GET /guarded/page principal=spiffe://cluster.local/ns/shop/sa/a protocol=HTTP/1.1",
    );
    // A body longer than maxRequestBytes: its first 16 bytes in the check, marked partial;
    // the app still gets all of it.
    let text = curl_i(
        &["-H", "x-ext-authz: allow", "--data", "0123456789abcdefXYZ"],
        "/guarded/post",
    );
    assert!(text.starts_with("http/1.1 200"), "{text}\n{}", log());
    assert!(text.contains("body=0123456789abcdefxyz"), "{text}");
    logged(
        "check POST /guarded/post principal=spiffe://cluster.local/ns/shop/sa/a protocol=HTTP/1.1 partial=true body=0123456789abcdef\n",
    );
    // Denied over gRPC: the authorizer's HTTP status, header and body reach the client.
    let text = curl_i(&[], "/guarded/page");
    assert!(text.starts_with("http/1.1 403"), "{text}\n{}", log());
    assert!(text.contains("x-ext-authz-check-result: denied"), "{text}");
    assert!(
        text.contains("denied by ext_authz for /guarded/page"),
        "{text}"
    );
    // A body over a provider's maxRequestBytes without allowPartialMessage: 413 before any
    // check; a body within it goes to the authorizer (unreachable here: statusOnError).
    let text = curl_i(&["--data", "0123456789"], "/strict/x");
    assert!(text.starts_with("http/1.1 413"), "{text}\n{}", log());
    let text = curl_i(&["--data", "012"], "/strict/x");
    assert!(text.starts_with("http/1.1 503"), "{text}\n{}", log());
    assert!(
        log().contains("request body over the authorizer's maxRequestBytes"),
        "{}",
        log()
    );
    let m = metrics(&waypoint);
    assert!(
        waypoint_requests(&m, &["response_code=\"403\"", "response_flags=\"UAEX\""]) >= 1.0,
        "{m}"
    );
}
