//! Which pods a rule applies to: every pod of the node (the default), or those of some
//! namespaces, or those whose labels a Kubernetes label selector matches, or both.
//!
//! Native rules say it with `namespaces` and `podSelector` (the Kubernetes `LabelSelector`
//! schema: `matchLabels` and `matchExpressions` with `In`, `NotIn`, `Exists`,
//! `DoesNotExist`). A ServiceEntry is visible where Istio makes it visible: `exportTo`
//! absent or `*` means every namespace, `.` its own, `~` none, other entries those
//! namespaces.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// What a scope needs to know of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The pods a rule applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// `None`: every namespace. An empty set: no pod at all (Istio's `exportTo: ["~"]`).
    pub namespaces: Option<BTreeSet<String>>,
    /// `None`: every pod of those namespaces.
    pub pods: Option<LabelSelector>,
}

impl Scope {
    /// Every pod of the node.
    pub fn node_wide(&self) -> bool {
        self.namespaces.is_none() && self.pods.is_none()
    }

    pub fn matches(&self, pod: &PodMeta) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.contains(&pod.namespace))
            && self.pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        match &self.namespaces {
            None => {}
            Some(ns) if ns.is_empty() => parts.push("no namespace".to_owned()),
            Some(ns) => parts.push(format!(
                "namespace {}",
                ns.iter().cloned().collect::<Vec<_>>().join(",")
            )),
        }
        if let Some(s) = &self.pods {
            parts.push(format!("pods {s}"));
        }
        if parts.is_empty() {
            f.write_str("every pod")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A Kubernetes label selector; every requirement must hold. An empty one matches every pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    pub values: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.op {
                Operator::In => value.is_some_and(|v| r.values.contains(v)),
                Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
                match r.op {
                    Operator::In if r.values.len() == 1 => format!("{}={values}", r.key),
                    Operator::In => format!("{} in ({values})", r.key),
                    Operator::NotIn => format!("{} notin ({values})", r.key),
                    Operator::Exists => r.key.clone(),
                    Operator::DoesNotExist => format!("!{}", r.key),
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The YAML form of a label selector.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorSpec {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<ExpressionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionSpec {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

impl SelectorSpec {
    /// Validates the selector as the API server would: label keys and values well formed,
    /// `In`/`NotIn` with values, `Exists`/`DoesNotExist` without. `None` for an empty
    /// selector, which matches every pod. The error names the offending part.
    pub fn into_selector(self) -> Result<Option<LabelSelector>, (String, String)> {
        let mut requirements = Vec::new();
        for (key, value) in self.match_labels {
            check_key(&key).map_err(|m| (format!("matchLabels.{key}"), m))?;
            check_value(&value).map_err(|m| (format!("matchLabels.{key}"), m))?;
            requirements.push(Requirement {
                key,
                op: Operator::In,
                values: BTreeSet::from([value]),
            });
        }
        for (i, e) in self.match_expressions.into_iter().enumerate() {
            let field = format!("matchExpressions[{i}]");
            check_key(&e.key).map_err(|m| (format!("{field}.key"), m))?;
            let needs_values = matches!(e.operator, Operator::In | Operator::NotIn);
            if needs_values && e.values.is_empty() {
                return Err((
                    format!("{field}.values"),
                    format!("{:?} needs at least one value", e.operator),
                ));
            }
            if !needs_values && !e.values.is_empty() {
                return Err((
                    format!("{field}.values"),
                    format!("{:?} takes no values", e.operator),
                ));
            }
            for v in &e.values {
                check_value(v).map_err(|m| (format!("{field}.values"), m))?;
            }
            requirements.push(Requirement {
                key: e.key,
                op: e.operator,
                values: e.values.into_iter().collect(),
            });
        }
        requirements.sort();
        requirements.dedup();
        Ok((!requirements.is_empty()).then_some(LabelSelector { requirements }))
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_`, `.`, beginning and ending alphanumeric.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }))
    {
        return Err(format!(
            "`{key}`: the prefix of a label key is a DNS subdomain"
        ));
    }
    if name.is_empty() {
        return Err(format!("`{key}`: a label key needs a name"));
    }
    check_value(name).map_err(|m| format!("`{key}`: {m}"))
}

/// A label value: at most 63 characters of alphanumerics, `-`, `_`, `.`, beginning and
/// ending alphanumeric (or empty).
fn check_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{v}` is not a label value (at most 63 of a-z, A-Z, 0-9, `-`, `_`, `.`, \
             alphanumeric at both ends)"
        ))
    }
}

/// A namespace name: a DNS label (RFC 1123), at most 63 characters.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{ns}` is not a namespace name (a DNS label: a-z, 0-9, `-`, at most 63)"
        ))
    }
}

/// The scope of a ServiceEntry in `namespace` exported to `export_to`.
pub fn export_scope(namespace: Option<&str>, export_to: &[String]) -> Result<Scope, String> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return Ok(Scope::default());
    }
    let mut namespaces = BTreeSet::new();
    for e in export_to {
        match e.as_str() {
            "~" => {}
            "." => match namespace {
                Some(ns) => {
                    namespaces.insert(ns.to_owned());
                }
                None => {
                    return Err("`.` exports to the entry's own namespace, but it has no \
                                `metadata.namespace`"
                        .into());
                }
            },
            ns => {
                check_namespace(ns)?;
                namespaces.insert(ns.to_owned());
            }
        }
    }
    Ok(Scope {
        namespaces: Some(namespaces),
        pods: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: ns.into(),
            name: "p".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn selector(yaml: &str) -> Result<Option<LabelSelector>, (String, String)> {
        let spec: SelectorSpec = serde_saphyr::from_str(yaml).unwrap();
        spec.into_selector()
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let s = selector(
            "matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n- {key: canary, operator: DoesNotExist}\n- {key: env, operator: NotIn, values: [dev]}\n",
        )
        .unwrap()
        .unwrap();
        assert!(s.matches(&pod("x", &[("app", "web"), ("tier", "a")]).labels));
        assert!(!s.matches(&pod("x", &[("app", "web"), ("tier", "c")]).labels));
        assert!(!s.matches(&pod("x", &[("app", "web"), ("tier", "a"), ("canary", "1")]).labels));
        assert!(!s.matches(&pod("x", &[("app", "web"), ("tier", "a"), ("env", "dev")]).labels));
        assert!(s.matches(&pod("x", &[("app", "web"), ("tier", "b"), ("env", "prod")]).labels));
        assert!(!s.matches(&pod("x", &[("tier", "a")]).labels));
    }

    #[test]
    fn empty_selector_is_every_pod_and_bad_ones_are_refused() {
        assert_eq!(selector("{}").unwrap(), None);
        assert!(selector("matchExpressions: [{key: a, operator: In}]").is_err());
        assert!(selector("matchExpressions: [{key: a, operator: Exists, values: [x]}]").is_err());
        assert!(selector("matchLabels: {'-bad': x}").is_err());
        assert!(selector("matchLabels: {app: 'has space'}").is_err());
        assert!(
            selector("matchLabels: {example.com/app: ok}")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn scopes_combine_namespace_and_labels() {
        let scope = Scope {
            namespaces: Some(BTreeSet::from(["team-a".to_owned()])),
            pods: selector("matchLabels: {app: web}").unwrap(),
        };
        assert!(scope.matches(&pod("team-a", &[("app", "web")])));
        assert!(!scope.matches(&pod("team-b", &[("app", "web")])));
        assert!(!scope.matches(&pod("team-a", &[("app", "db")])));
        assert!(Scope::default().matches(&pod("any", &[])));
    }

    #[test]
    fn export_to_follows_istio() {
        let to = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(export_scope(Some("a"), &[]).unwrap().node_wide());
        assert!(export_scope(Some("a"), &to(&["*"])).unwrap().node_wide());
        let own = export_scope(Some("a"), &to(&["."])).unwrap();
        assert_eq!(own.namespaces, Some(BTreeSet::from(["a".to_owned()])));
        let none = export_scope(Some("a"), &to(&["~"])).unwrap();
        assert_eq!(none.namespaces, Some(BTreeSet::new()));
        assert!(!none.matches(&pod("a", &[])));
        assert!(export_scope(None, &to(&["."])).is_err());
        let listed = export_scope(None, &to(&["b", "c"])).unwrap();
        assert!(listed.matches(&pod("c", &[])) && !listed.matches(&pod("a", &[])));
    }
}
