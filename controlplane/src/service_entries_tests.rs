use super::*;

fn entries(yaml: &str) -> Vec<ServiceEntry> {
    yaml.split("\n---\n")
        .map(|doc| {
            let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

fn run(yaml: &str) -> (Translated, Vec<Rejected>) {
    let mut errors = vec![];
    let out = translate(
        &entries(yaml),
        &Mesh::default(),
        &BTreeSet::new(),
        &mut errors,
    );
    (out, errors)
}

fn service<'a>(t: &'a Translated, key: &str) -> &'a pb::Service {
    match t.addresses.get(key).and_then(|a| a.r#type.as_ref()) {
        Some(pb::address::Type::Service(s)) => s,
        other => panic!("{key}: {other:?} in {:?}", t.addresses.keys()),
    }
}

fn workloads(t: &Translated) -> Vec<&pb::Workload> {
    t.addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(pb::address::Type::Workload(w)) => Some(w),
            _ => None,
        })
        .collect()
}

fn ips(s: &pb::Service) -> Vec<String> {
    s.addresses
        .iter()
        .map(|a| {
            let ip = match a.address.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(&a.address[..]).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(&a.address[..]).unwrap()),
            };
            match a.length {
                Some(l) => format!("{ip}/{l}"),
                None => ip.to_string(),
            }
        })
        .collect()
}

#[test]
fn entries_become_services_and_workloads_as_istiod_makes_them() {
    let (t, errors) = run(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [api.example.com, api2.example.com]
  ports: [{number: 443, name: https, protocol: TLS}, {number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.10, ports: {http: 9090}, serviceAccount: api}
  - {address: 192.0.2.11, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  hosts: [db.example.com]
  addresses: [198.51.100.0/24]
  ports: [{number: 5432, name: tcp}]
  resolution: DNS
  endpoints: [{address: db.internal.example.com}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-self, namespace: shop, creationTimestamp: "2026-01-03T00:00:00Z"}
spec:
  hosts: [self.example.com]
  ports: [{number: 443, name: tls}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pass, namespace: shop, creationTimestamp: "2026-01-04T00:00:00Z"}
spec:
  hosts: [pass.example.com]
  ports: [{number: 443, name: tls}]
"#);
    assert!(errors.is_empty(), "{errors:?}");
    // One service per host, auto-allocated from Istio's ranges in age order.
    let api = service(&t, "shop/api.example.com");
    assert_eq!((api.name.as_str(), api.namespace.as_str()), ("api", "shop"));
    assert_eq!(ips(api), ["240.240.0.1", "2001:2::1"]);
    assert_eq!(
        ips(service(&t, "shop/api2.example.com")),
        ["240.240.0.2", "2001:2::2"]
    );
    assert_eq!(api.ports[1].service_port, 80);
    assert_eq!(api.ports[1].target_port, 8080);
    assert_eq!(api.ports[1].app_protocol, pb::AppProtocol::Http11 as i32);
    assert_eq!(api.ports[0].app_protocol, pb::AppProtocol::Tls as i32);
    assert!(api.load_balancing.is_none());
    // User addresses (a CIDR too) win over allocation.
    assert_eq!(ips(service(&t, "shop/db.example.com")), ["198.51.100.0/24"]);
    assert_eq!(
        ips(service(&t, "shop/self.example.com")),
        ["240.240.0.3", "2001:2::3"]
    );
    // NONE: no address allocated, passthrough to where the client dialled.
    let pass = service(&t, "shop/pass.example.com");
    assert!(pass.addresses.is_empty());
    assert_eq!(
        pass.load_balancing.as_ref().map(|l| l.mode),
        Some(pb::load_balancing::Mode::Passthrough as i32)
    );
    // Endpoints: IPs, or host names to resolve; plain TCP; both hosts; per-endpoint ports.
    let ws = workloads(&t);
    let ep = ws
        .iter()
        .find(|w| w.uid.ends_with("/api/192.0.2.10"))
        .unwrap();
    assert_eq!(
        ep.uid,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/api/192.0.2.10"
    );
    assert_eq!(ep.addresses, [vec![192, 0, 2, 10]]);
    assert_eq!(ep.tunnel_protocol, pb::TunnelProtocol::None as i32);
    assert_eq!(ep.service_account, "api");
    let http = |w: &pb::Workload, host: &str| {
        w.services[host]
            .ports
            .iter()
            .find(|p| p.service_port == 80)
            .map(|p| p.target_port)
    };
    assert_eq!(http(ep, "shop/api.example.com"), Some(9090));
    assert_eq!(http(ep, "shop/api2.example.com"), Some(9090));
    let other = ws
        .iter()
        .find(|w| w.uid.ends_with("/api/192.0.2.11"))
        .unwrap();
    assert_eq!(http(other, "shop/api.example.com"), Some(8080));
    assert_eq!(other.service_account, "default");
    assert_eq!(other.capacity, Some(3));
    let db = ws.iter().find(|w| w.name == "db").unwrap();
    assert!(db.addresses.is_empty());
    assert_eq!(db.hostname, "db.internal.example.com");
    let own = ws.iter().find(|w| w.name == "dns-self").unwrap();
    assert_eq!(own.hostname, "self.example.com");
    assert!(own.services.contains_key("shop/self.example.com"));
    assert!(
        !ws.iter().any(|w| w.name == "pass"),
        "NONE without endpoints has none"
    );
}

#[test]
fn allocation_honours_istios_status_its_opt_out_and_addresses_in_use() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: old, namespace: a, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {hosts: [old.example.com], ports: [{number: 80, name: http}], resolution: DNS}
status: {addresses: [{value: 240.240.0.1, host: old.example.com}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: new, namespace: a, creationTimestamp: "2026-01-02T00:00:00Z"}
spec: {hosts: [new.example.com, "*.wild.example.com"], ports: [{number: 80, name: http}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: out
  namespace: a
  creationTimestamp: "2026-01-03T00:00:00Z"
  labels: {networking.istio.io/enable-autoallocate-ip: "false"}
spec: {hosts: [out.example.com], ports: [{number: 80, name: http}], resolution: DNS}
"#;
    let mut errors = vec![];
    let taken = BTreeSet::from(["240.240.0.2".parse::<IpAddr>().unwrap()]);
    let t = translate(&entries(yaml), &Mesh::default(), &taken, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ips(service(&t, "a/old.example.com")), ["240.240.0.1"]);
    // .1 is Istio's, .2 a Service's: the next free one.
    assert_eq!(
        ips(service(&t, "a/new.example.com")),
        ["240.240.0.3", "2001:2::3"]
    );
    assert!(service(&t, "a/*.wild.example.com").addresses.is_empty());
    assert!(service(&t, "a/out.example.com").addresses.is_empty());
}

#[test]
fn invalid_entries_are_reported_with_the_field_and_skipped_alone() {
    let cases = [
        ("hosts: []", "spec.hosts: at least one host"),
        ("hosts: [\"bad host\"]", "spec.hosts[0]"),
        (
            "hosts: [a.example.com]\n  addresses: [nope]",
            "spec.addresses[0]",
        ),
        (
            "hosts: [a.example.com]\n  ports: [{number: 70000, name: x}]",
            "spec.ports[0].number",
        ),
        (
            "hosts: [a.example.com]\n  ports: [{number: 1, name: x}, {number: 2, name: x}]",
            "used twice",
        ),
        (
            "hosts: [a.example.com]\n  resolution: MAGIC",
            "spec.resolution",
        ),
        (
            "hosts: [a.example.com]\n  resolution: STATIC\n  endpoints: [{address: host.example.com}]",
            "must be an IP",
        ),
        (
            "hosts: [a.example.com]\n  endpoints: [{address: 192.0.2.1}]\n  workloadSelector: {labels: {app: x}}",
            "cannot both",
        ),
    ];
    for (spec, reason) in cases {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: bad, namespace: a}}\nspec:\n  {spec}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: good, namespace: a}}\nspec: {{hosts: [good.example.com], resolution: DNS}}"
        );
        let (t, errors) = run(&yaml);
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        assert!(
            errors[0].reason.contains(reason),
            "{spec}: {}",
            errors[0].reason
        );
        assert_eq!(errors[0].name, "bad");
        assert!(
            t.addresses.contains_key("a/good.example.com"),
            "{spec}: the good one stays"
        );
    }
}

#[test]
fn selector_entries_add_their_hosts_to_the_selected_pods() {
    let (t, errors) = run(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.example.com]
  ports: [{number: 80, name: http, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
"#);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(workloads(&t).is_empty());
    let mut w = pb::Workload::default();
    let labels = BTreeMap::from([("app".to_string(), "legacy".to_string())]);
    apply_selected(&t.selected, "other", &labels, &mut w);
    assert!(w.services.is_empty(), "another namespace");
    apply_selected(&t.selected, "shop", &BTreeMap::new(), &mut w);
    assert!(w.services.is_empty(), "labels do not match");
    apply_selected(&t.selected, "shop", &labels, &mut w);
    assert_eq!(
        w.services["shop/legacy.example.com"].ports[0].target_port,
        8080
    );
}
