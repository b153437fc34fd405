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

/// Runs the agent binary with capabilities dropped from its bounding set (as a container
/// runtime does): a root process keeps only what the bounding set allows across exec.
fn without_caps(caps: &'static [u32], args: &[&str]) -> (i32, String) {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(egress_tests::agent::binary());
    cmd.args(args);
    // SAFETY: prctl only, on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for &cap in caps {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The preflight check says what is missing, and `run` refuses to start without it.
#[test]
fn preflight_names_missing_capabilities() {
    egress_tests::require_root();
    let (code, text) = without_caps(&[], &["preflight"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok    capabilities"), "{text}");
    // CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_BPF 39.
    let (code, text) = without_caps(&[12, 21, 39], &["preflight"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL  capabilities  missing CAP_BPF (or CAP_SYS_ADMIN)")
            && text.contains("CAP_NET_ADMIN"),
        "{text}"
    );
    let (code, text) = without_caps(
        &[12, 21, 39],
        &[
            "run",
            "--policy",
            "/nonexistent",
            "--cgroup",
            "/",
            "--state-dir",
            "/tmp/egress-preflight-test",
        ],
    );
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("this node cannot enforce egress") && text.contains("CAP_NET_ADMIN"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all("/tmp/egress-preflight-test");
}

/// The policy shipped in deploy/configmap.yaml is valid (the manifests themselves are
/// checked against the Kubernetes schema by `cargo xtask lint`).
#[test]
fn the_deployed_policy_is_valid() {
    let manifest = include_str!("../../deploy/configmap.yaml");
    let policy: String = manifest
        .lines()
        .skip_while(|l| l.trim() != "policy.yaml: |")
        .skip(1)
        .map_while(|l| l.strip_prefix("    ").or((l.is_empty()).then_some("")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(policy.contains("kind: EgressPolicy"), "{policy}");
    let (code, out, err) = check(&policy);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("namespace reports"), "{out}");
}
