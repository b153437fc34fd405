use super::*;
use crate::ports::Protocol;

fn ok(text: &str) -> Policy {
    parse(text, "policy.yaml").unwrap_or_else(|e| panic!("expected a valid policy: {e}"))
}

fn err(text: &str) -> String {
    match parse(text, "policy.yaml") {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

/// The reference ServiceEntry of the Istio egress-lockdown scenario, verbatim.
pub const ISTIO_REFERENCE: &str = include_str!("../../../examples/istio-serviceentry.yaml");

#[test]
fn istio_reference_service_entry_allows_443_tcp_to_its_host() {
    let p = ok(ISTIO_REFERENCE);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.default_action, Action::Deny);
    assert_eq!(p.dns_resolvers, vec![DnsResolver::Upstream]);
    assert_eq!(p.rules.len(), 1);
    let r = &p.rules[0];
    assert_eq!(r.label, "ServiceEntry context-scraper-egress");
    assert_eq!(
        r.hosts,
        vec![Hostname::parse("www.googleapis.com").unwrap()]
    );
    assert!(r.nets.is_empty());
    assert_eq!(r.ports.to_string(), "443/TCP");
}

#[test]
fn mesh_config_sets_the_mode_and_several_documents_combine() {
    let text = format!(
        "outboundTrafficPolicy:\n  mode: ALLOW_ANY\naccessLogFile: /dev/stdout\n---\n{ISTIO_REFERENCE}---\n{}",
        ISTIO_REFERENCE.replace("www.googleapis.com", "storage.googleapis.com")
    );
    let p = ok(&text);
    assert_eq!(p.mode, Mode::Audit);
    assert_eq!(p.rules.len(), 2);
    let p = ok("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n");
    assert_eq!((p.mode, p.default_action), (Mode::Enforce, Action::Deny));
    assert!(p.rules.is_empty());
}

#[test]
fn istio_operator_mode_is_read() {
    let p = ok(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: default\n  meshConfig:\n    outboundTrafficPolicy:\n      mode: ALLOW_ANY\n",
    );
    assert_eq!(p.mode, Mode::Audit);
}

#[test]
fn service_entry_addresses_endpoints_and_resolutions() {
    let p = ok("\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: prod, uid: abc, resourceVersion: '1'}
spec:
  hosts: [mydb.example.com]
  addresses: [192.0.2.0/24]
  ports:
  - {number: 27018, name: mongo, protocol: MONGO, targetPort: 27017}
  - {number: 53, name: dns, protocol: UDP}
  resolution: STATIC
  endpoints:
  - address: 198.51.100.5
  - address: 198.51.100.6
    ports: {mongo: 30000}
  exportTo: ['.']
status: {}
");
    assert_eq!(p.rules.len(), 3);
    let base = &p.rules[0];
    assert_eq!(base.label, "ServiceEntry prod/db");
    assert!(base.hosts.is_empty(), "STATIC hosts are not resolved");
    assert_eq!(base.nets, vec!["192.0.2.0/24".parse().unwrap()]);
    assert_eq!(base.ports.to_string(), "27018/TCP, 53/UDP");
    assert_eq!(p.rules[1].ports.to_string(), "27017/TCP, 53/UDP");
    assert_eq!(p.rules[2].ports.to_string(), "30000/TCP, 53/UDP");
    for r in &p.rules {
        assert_eq!(
            r.scope.to_string(),
            "namespace prod",
            "exportTo '.' scopes every rule"
        );
    }
}

#[test]
fn dns_endpoints_are_resolved_hostnames() {
    let p = ok("\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [external.example]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: us.backend.example}]
");
    assert_eq!(p.rules[0].hosts[0].as_str(), "external.example");
    assert_eq!(p.rules[1].hosts[0].as_str(), "us.backend.example");
}

#[test]
fn native_schema_full() {
    let p = ok("\
apiVersion: egress/v1
kind: EgressPolicy
mode: audit
defaultAction: deny
dnsResolvers: [upstream, 10.96.0.10]
rules:
  - name: apis
    hosts: [Api.Allowed.TEST., api.allowed.test]
    ports: [80, \"8000-8010\"]
  - cidrs: [203.0.113.0/24, '::ffff:198.51.100.7', 2001:db8::/48]
    protocol: ANY
  - action: deny
    cidrs: [203.0.113.66]
    ports: [22]
    protocol: UDP
");
    assert_eq!(p.mode, Mode::Audit);
    assert_eq!(
        p.dns_resolvers,
        vec![
            DnsResolver::Upstream,
            DnsResolver::Addr("10.96.0.10".parse().unwrap())
        ]
    );
    assert_eq!(p.rules[0].label, "rule apis");
    assert_eq!(p.rules[0].hosts.len(), 2);
    assert_eq!(p.rules[0].hosts[0], p.rules[0].hosts[1]);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("api.allowed.test is named by 2 rules"))
    );
    assert_eq!(p.rules[0].ports.to_string(), "80,8000-8010/TCP");
    assert_eq!(p.rules[1].label, "rule #2");
    assert_eq!(p.rules[1].ports.to_string(), "any/TCP, any/UDP");
    assert_eq!(p.rules[1].nets[1].to_string(), "198.51.100.7/32");
    assert_eq!(p.rules[2].action, Action::Deny);
    assert!(p.rules[2].ports.allows(Protocol::Udp, 22));
    assert!(!p.rules[2].ports.allows(Protocol::Tcp, 22));
}

#[test]
fn empty_rules_is_valid_and_denies_everything() {
    let p = ok("apiVersion: egress/v1\nkind: EgressPolicy\nrules: []\n");
    assert_eq!((p.mode, p.default_action), (Mode::Enforce, Action::Deny));
    assert!(p.rules.is_empty());
}

/// BR-27: broken files are refused with file, line, column and field, never read leniently.
#[test]
fn broken_policies_are_refused_with_positions() {
    let mesh = |mode: &str| format!("outboundTrafficPolicy:\n  mode: {mode}\n");
    let e = err(&mesh("REGISTRY-ONLY"));
    assert!(
        e.starts_with(
            "policy.yaml:2:9: outboundTrafficPolicy.mode: unknown variant `REGISTRY-ONLY`"
        ),
        "{e}"
    );
    assert!(err(&mesh("registry_only")).contains("unknown variant `registry_only`"));

    let native = "apiVersion: egress/v1\nkind: EgressPolicy\n";
    let e = err(&format!("{native}rules:\n  - hots: [api.allowed.test]\n"));
    assert!(
        e.starts_with("policy.yaml:4:5: rules[0].hots: unknown field `hots`"),
        "{e}"
    );
    let e = err(&format!("{native}hots: []\nrules: []\n"));
    assert!(e.contains("unknown field `hots`"), "{e}");

    let e = err(&format!(
        "{native}rules:\n  - hosts: [a.test]\n    ports: [\"443/tcp\"]\n"
    ));
    assert!(
        e.starts_with("policy.yaml:5:13: rules[0].ports[0]: `443/tcp` is not a port"),
        "{e}"
    );
    let e = err(&format!(
        "{native}rules:\n  - hosts: [a.test]\n    ports: [70000]\n"
    ));
    assert!(
        e.contains("rules[0].ports[0]: port 70000 is out of range"),
        "{e}"
    );
    let e = err(&format!(
        "{native}rules:\n  - hosts: [a.test]\n    protocol: TPC\n"
    ));
    assert!(
        e.contains("rules[0].protocol: unknown variant `TPC`"),
        "{e}"
    );

    let e = err(&format!("{native}rules:\n\t- hosts: [a.test]\n"));
    assert!(e.starts_with("policy.yaml:4:"), "{e}");
    assert!(e.contains("tab"), "{e}");
    let two = format!("{native}rules: []\n---\n{native}rules: []\n");
    assert!(err(&two).contains("a second EgressPolicy document"));
    assert!(err("").contains("holds no YAML document"));
    assert!(err("# only a comment\n").contains("holds no YAML document"));

    let e = err(&format!("{native}mode: enforce\nmode: audit\nrules: []\n"));
    assert!(e.contains("duplicate mapping key"), "{e}");
    assert!(e.starts_with("policy.yaml:4:1:"), "{e}");

    // A mode set by two documents is as ambiguous as a key given twice.
    let e = err(&format!(
        "{}---\n{}",
        mesh("REGISTRY_ONLY"),
        mesh("ALLOW_ANY")
    ));
    assert!(e.contains("the mode is already set"), "{e}");
    assert!(err("outboundTrafficPolicy: {}\n").contains("missing field `mode`"));
}

/// BR-20: malformed port ranges name the field.
#[test]
fn malformed_port_ranges_are_refused() {
    for bad in ["8010-8000", "0-80", "1-65536", "80-"] {
        let e = err(&format!(
            "apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n  - hosts: [range.allowed.test]\n    ports: [\"{bad}\"]\n"
        ));
        assert!(e.contains("rules[0].ports[0]:"), "{bad}: {e}");
    }
}

/// BR-15 and BR-16: bad names are refused at load with their line; wildcards are refused,
/// never read as a literal `*` label.
#[test]
fn bad_hostnames_are_refused_with_their_line() {
    let long = "a".repeat(64);
    let e = err(&format!(
        "apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n  - hosts: [ok.test, {long}.allowed.test]\n"
    ));
    assert!(e.starts_with("policy.yaml:4:"), "{e}");
    assert!(e.contains("rules[0].hosts[1]"), "{e}");
    assert!(e.contains("at most 63"), "{e}");
    let e = err(&ISTIO_REFERENCE.replace("www.googleapis.com", "\"*.googleapis.com\""));
    assert!(e.starts_with("policy.yaml:7:"), "{e}");
    assert!(e.contains("spec.hosts[0]"), "{e}");
    assert!(e.contains("wildcard"), "{e}");
    assert!(err(&ISTIO_REFERENCE.replace("www.googleapis.com", "a..b")).contains("empty label"));
}

#[test]
fn service_entry_errors_name_the_field() {
    let e = err(&ISTIO_REFERENCE.replace("protocol: HTTPS", "protocol: QUIC"));
    assert!(
        e.contains("spec.ports[0].protocol: unknown port protocol `QUIC`"),
        "{e}"
    );
    assert!(e.starts_with("policy.yaml:9:"), "{e}");
    let e = err(&ISTIO_REFERENCE.replace("resolution: DNS", "resolution: dns"));
    assert!(e.contains("spec.resolution: unknown variant `dns`"), "{e}");
    let e = err(&ISTIO_REFERENCE.replace("location: MESH_EXTERNAL", "locaton: MESH_EXTERNAL"));
    assert!(e.contains("unknown field `locaton`"), "{e}");
    let e = err(&ISTIO_REFERENCE.replace("number: 443", "number: 0"));
    assert!(
        e.contains("spec.ports[0].number: port 0 is out of range"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\n");
    assert!(e.contains("unsupported kind `Pod`"), "{e}");
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    text.push_str("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    let e = err(&text);
    assert!(!e.is_empty());
}

/// The README's examples (examples/*.yaml) are valid.
#[test]
fn examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        load(&path).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 3);
    let (native, _) = load(std::path::Path::new(&format!("{dir}/native-policy.yaml"))).unwrap();
    assert_eq!(native.rules.len(), 4);
    assert_eq!(native.rules[1].action, Action::Deny);
    assert_eq!(native.rules[3].sockets, egress_common::SocketKinds::ICMP);
    assert_eq!(
        native.rules[2].scope.to_string(),
        "namespace team-a, pods app=ci"
    );
}

/// Keys written without a value are errors, not defaults: an emptied `ports:` must not mean
/// every port, nor an emptied `action:` allow (found by attacking the parser).
#[test]
fn keys_without_values_are_refused() {
    let native = "apiVersion: egress/v1\nkind: EgressPolicy\n";
    for (rule, field) in [
        (
            "  - hosts: [a.test]\n    ports:\n    # - 443\n",
            "rules[0].ports",
        ),
        ("  - hosts: [a.test]\n    action:\n", "rules[0].action"),
        ("  - hosts: [a.test]\n    protocol:\n", "rules[0].protocol"),
        ("  - hosts:\n    cidrs: [192.0.2.1]\n", "rules[0].hosts"),
    ] {
        let e = err(&format!("{native}rules:\n{rule}"));
        assert!(
            e.contains(&format!("{field}: the key has no value")),
            "{rule:?}: {e}"
        );
    }
    let e = err(&format!("{native}defaultAction:\nrules: []\n"));
    assert!(e.contains("defaultAction: the key has no value"), "{e}");
}

/// A native rule's `hosts` takes names; an address there is refused with a pointer to
/// `cidrs` (it would otherwise be looked up in DNS and allow nothing).
#[test]
fn addresses_in_native_hosts_are_refused() {
    let native = "apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n";
    for host in ["198.51.100.10", "2001:db8::1", "10.0.0.1.", "host.123"] {
        let e = err(&format!("{native}  - hosts: [\"{host}\"]\n"));
        assert!(
            e.contains("is an address, not a hostname; list addresses under `cidrs`"),
            "{host}: {e}"
        );
    }
    assert!(
        parse(
            &format!("{native}  - hosts: [a1.example.com, 1a.test]\n"),
            "p.yaml"
        )
        .is_ok()
    );
}

/// NAT64 addresses (what DNS64 answers with) are stored as the IPv4 hosts they stand for, the
/// way the kernel judges them.
#[test]
fn nat64_addresses_are_stored_as_ipv4() {
    use crate::policy::values::{Net, unmap_addr};
    assert_eq!(
        Net::parse("64:ff9b::198.51.100.10").unwrap().0.to_string(),
        "198.51.100.10/32"
    );
    assert_eq!(
        Net::parse("64:ff9b::/96").unwrap().0.to_string(),
        "0.0.0.0/0"
    );
    assert_eq!(
        Net::parse("64:ff9b::cb00:7100/120").unwrap().0.to_string(),
        "203.0.113.0/24"
    );
    assert_eq!(
        Net::parse("64:ff9b::/32").unwrap().0.to_string(),
        "64:ff9b::/32"
    );
    assert_eq!(
        unmap_addr("64:ff9b::c633:640a".parse().unwrap()).to_string(),
        "198.51.100.10"
    );
}

/// A deny rule without `protocol` closes UDP too (a TCP-only default would leave QUIC and
/// DNS tunnels open through a deny-list); an allow rule opens TCP only.
#[test]
fn deny_rules_default_to_every_protocol() {
    let p = ok("\
apiVersion: egress/v1
kind: EgressPolicy
defaultAction: allow
rules:
  - {action: deny, cidrs: [198.51.100.66]}
  - {cidrs: [198.51.100.7], ports: [443]}
  - {action: deny, cidrs: [198.51.100.8], protocol: TCP}
");
    assert_eq!(p.rules[0].ports.to_string(), "any/TCP, any/UDP");
    assert_eq!(p.rules[1].ports.to_string(), "443/TCP");
    assert_eq!(p.rules[2].ports.to_string(), "any/TCP");
}

#[test]
fn socket_rules_are_allow_only_and_name_nothing_else() {
    let native = "apiVersion: egress/v1\nkind: EgressPolicy\n";
    let p = ok(&format!("{native}rules:\n  - sockets: [icmp, raw]\n"));
    assert_eq!(
        p.rules[0].sockets,
        egress_common::SocketKinds::ICMP.union(egress_common::SocketKinds::RAW)
    );
    assert!(p.rules[0].hosts.is_empty() && p.rules[0].ports.is_empty());
    let e = err(&format!(
        "{native}rules:\n  - sockets: [icmp]\n    action: deny\n"
    ));
    assert!(
        e.contains("policy.yaml:4:5") && e.contains("rules[0].sockets"),
        "{e}"
    );
    assert!(e.contains("a deny rule cannot name them"), "{e}");
    let e = err(&format!(
        "{native}rules:\n  - sockets: [icmp]\n    hosts: [a.test]\n"
    ));
    assert!(e.contains("cannot also name hosts"), "{e}");
    let e = err(&format!("{native}rules:\n  - sockets: []\n"));
    assert!(e.contains("`sockets: []` allows nothing"), "{e}");
    let e = err(&format!("{native}rules:\n  - sockets: [tun]\n"));
    assert!(e.contains("unknown variant `tun`"), "{e}");
}
