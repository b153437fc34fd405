//! A small world to enforce egress in, built from real kernel pieces:
//!
//! ```text
//!  netns "pod" (enforced cgroup)         netns "world"
//!  p0 10.200.0.2/24, fd00:200::2/64 <--veth--> w0 10.200.0.1/24, fd00:200::1/64
//!  default routes via w0                       10.200.0.53: DNS (UDP+TCP) — zonesrv
//!                                              AnyIP "internet": 192.0.2.0/24, 198.51.100.0/24,
//!                                              203.0.113.0/24, 100.64.0.0/10, 2001:db8:100::/64
//!                                              TLS on 443, plain TCP and UDP listeners;
//!                                              a packet capture on w0; the agent runs here
//! ```
//!
//! Everything is created per test with unique names and removed on drop, so tests run in
//! parallel and leave nothing behind. Creating namespaces, cgroups and BPF programs needs
//! root: [`require_root`] fails a test loudly where that is missing.

pub mod agent;
pub mod allow_all;
pub mod cgroup;
pub mod kubeapi;
pub mod netns;
pub mod pod;
pub mod probe;
pub mod prober;
pub mod servers;
pub mod sniffer;
pub mod tls;
pub mod world;
pub mod zonesrv;

use std::sync::atomic::{AtomicU32, Ordering};

/// The repository's example policies (examples/), which the README shows.
pub mod examples {
    pub const REGISTRY_ONLY: &str = include_str!("../../examples/istio-registry-only.yaml");
    /// The reference ServiceEntry of the Istio egress-lockdown scenario, verbatim.
    pub const SERVICE_ENTRY: &str = include_str!("../../examples/istio-serviceentry.yaml");
}

/// A name unique to this process and call, for namespaces, cgroups and directories.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails (never skips) when the privileges the end-to-end tests need are missing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load BPF programs and create network namespaces and cgroups: run them as \
         root (`sudo -E cargo xtask test`); they fail rather than skip so that a CI run \
         without privileges cannot pass"
    );
}

/// Runs a command to completion, failing with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
