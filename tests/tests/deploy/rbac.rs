//! RBAC: no wildcards, exactly the grants each component uses, bound to its account.

use super::*;

/// One permission: (API group, resource, verb, resource name or "" for any).
type Grant = (String, String, String, String);

fn grants(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let names = rule.resource_names.clone().unwrap_or_default();
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for n in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Grants from `(group, resources, verbs, resource name)` rows, space-separated lists.
fn expect(rows: &[(&str, &str, &str, &str)]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs, name) in rows {
        for resource in resources.split_whitespace() {
            for verb in verbs.split_whitespace() {
                out.insert((
                    group.to_string(),
                    resource.into(),
                    verb.into(),
                    name.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn no_rule_has_a_wildcard() {
    for (role, rules) in roles(&manifests()) {
        assert!(!rules.is_empty(), "{role} has rules");
        for rule in rules {
            let fields = [
                ("apiGroups", rule.api_groups.clone().unwrap_or_default()),
                ("resources", rule.resources.clone().unwrap_or_default()),
                ("verbs", rule.verbs.clone()),
                (
                    "resourceNames",
                    rule.resource_names.clone().unwrap_or_default(),
                ),
            ];
            for (field, values) in fields {
                assert!(
                    !values.iter().any(|v| v.contains('*')),
                    "{role}: `*` in {field}"
                );
            }
            assert!(rule.non_resource_urls.is_none(), "{role}: nonResourceURLs");
        }
    }
}

#[test]
fn roles_grant_exactly_what_each_component_uses() {
    let objects = manifests();
    let roles = roles(&objects);
    let events = [
        ("", "events", "create patch", ""),
        ("events.k8s.io", "events", "create patch", ""),
    ];
    let node = expect(&[
        ("", "namespaces", "get list watch", ""),
        ("", "pods", "get list watch", ""),
        // The agent sets the `ambient.istio.io/redirection` annotation through the status
        // subresource, which cannot change a pod's spec.
        ("", "pods/status", "patch", ""),
    ]);
    let mut istiod = expect(&[
        ("", "namespaces pods services", "get list watch", ""),
        ("discovery.k8s.io", "endpointslices", "get list watch", ""),
        (
            "security.istio.io",
            "authorizationpolicies peerauthentications requestauthentications",
            "get list watch",
            "",
        ),
        (
            "networking.istio.io",
            "virtualservices destinationrules serviceentries",
            "get list watch",
            "",
        ),
        (
            "gateway.networking.k8s.io",
            "gateways gatewayclasses httproutes grpcroutes tcproutes",
            "get list watch",
            "",
        ),
        (
            "gateway.networking.k8s.io",
            "gateways/status httproutes/status grpcroutes/status tcproutes/status",
            "patch",
            "",
        ),
        ("", "serviceaccounts services", "create patch", ""),
        ("apps", "deployments", "create patch", ""),
        ("authentication.k8s.io", "tokenreviews", "create", ""),
    ]);
    istiod.extend(expect(&events));
    let secrets = expect(&[
        ("", "secrets", "get update", "istio-ca-secret"),
        ("", "configmaps", "get update", "istio-ca-root-cert"),
        // `create` cannot be restricted by name; namespaced, so only this namespace.
        ("", "secrets configmaps", "create", ""),
    ]);
    let actual: BTreeMap<&str, BTreeSet<Grant>> = roles
        .iter()
        .map(|(k, rules)| (k.as_str(), grants(rules)))
        .collect();
    let wanted: BTreeMap<&str, BTreeSet<Grant>> = [
        ("ClusterRole/amesh-node", node),
        ("ClusterRole/amesh-istiod", istiod),
        ("Role/amesh-istiod", secrets),
    ]
    .into();
    for (role, grants) in &wanted {
        let have = actual
            .get(role)
            .unwrap_or_else(|| panic!("{role} is missing"));
        assert_eq!(
            have,
            grants,
            "{role}: granted but not wanted {:?}; wanted but not granted {:?}",
            have.difference(grants).collect::<Vec<_>>(),
            grants.difference(have).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        wanted.keys().collect::<Vec<_>>()
    );
}

#[test]
fn bindings_give_each_role_to_its_service_account() {
    let objects = manifests();
    let (roles, sas) = (roles(&objects), service_accounts(&objects));
    let wanted = [
        (
            "ClusterRoleBinding/amesh-node",
            "ClusterRole",
            "amesh-node",
            "ztunnel",
        ),
        (
            "ClusterRoleBinding/amesh-istiod",
            "ClusterRole",
            "amesh-istiod",
            "istiod",
        ),
        ("RoleBinding/amesh-istiod", "Role", "amesh-istiod", "istiod"),
    ];
    let bindings = bindings(&objects);
    assert_eq!(bindings.len(), wanted.len(), "{:?}", bindings.keys());
    for (binding, kind, role, sa) in wanted {
        let (role_ref, subjects) = bindings.get(binding).unwrap_or_else(|| panic!("{binding}"));
        assert_eq!(
            (role_ref.kind.as_str(), role_ref.name.as_str()),
            (kind, role),
            "{binding}"
        );
        assert!(
            roles.contains_key(&format!("{kind}/{role}")),
            "{binding}: {kind}/{role} exists"
        );
        assert_eq!(subjects.len(), 1, "{binding}");
        let s = &subjects[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", sa, Some(NAMESPACE)),
            "{binding}"
        );
        assert!(sas.contains_key(sa), "ServiceAccount {sa} exists");
    }
}
