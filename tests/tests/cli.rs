//! The CLI without a kernel: `check` validates files and says what they would enforce.

use std::process::Command;

fn check(text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(egress_tests::unique("egress-cli-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(egress_tests::agent::binary())
        .args(["check", "--policy"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_what_a_valid_policy_enforces() {
    let (code, out, err) = check(
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {name: googleapis}\nspec:\n  hosts: [www.googleapis.com]\n  addresses: [203.0.113.0/24]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  resolution: DNS\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": valid (digest "), "{out}");
    assert!(
        out.contains("mode: enforce; destinations no rule allows: deny"),
        "{out}"
    );
    assert!(out.contains("allow ServiceEntry googleapis"), "{out}");
    assert!(
        out.contains("hosts: www.googleapis.com (resolved by the agent)"),
        "{out}"
    );
    assert!(out.contains("203.0.113.0/24           443/TCP"), "{out}");
}

#[test]
fn check_refuses_an_invalid_policy_with_file_line_and_field() {
    let (code, out, err) = check("outboundTrafficPolicy:\n  mode: REGISTRY-ONLY\n");
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.starts_with("error: /"), "{err}");
    assert!(err.contains("policy.yaml:2:9: outboundTrafficPolicy.mode: unknown variant `REGISTRY-ONLY`, expected one of REGISTRY_ONLY, ALLOW_ANY"), "{err}");
}

#[test]
fn check_json_is_machine_readable() {
    let dir = std::env::temp_dir().join(egress_tests::unique("egress-cli-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.yaml");
    std::fs::write(&file, "apiVersion: egress/v1\nkind: EgressPolicy\nmode: audit\nrules:\n  - cidrs: [192.0.2.1]\n    ports: [\"8000-8010\"]\n    protocol: ANY\n").unwrap();
    let out = Command::new(egress_tests::agent::binary())
        .args(["check", "--json", "--policy"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "audit");
    assert_eq!(v["literal_entries"][0]["destination"], "192.0.2.1");
    assert_eq!(
        v["literal_entries"][0]["ports"],
        "8000-8010/TCP, 8000-8010/UDP"
    );
}
