//! The real `egress-agent` binary, run as a separate process the way a DaemonSet runs it.

use std::{
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egress_agent::agent::status::{self, Status};

use crate::netns::Netns;

/// The directory holding the workspace's binaries (`target/<profile>`), found from the
/// running test executable (`target/<profile>/deps/<test>` or `target/<profile>/<bin>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// The agent binary: `EGRESS_AGENT_BIN`, or the one built beside the tests. `cargo test -p
/// egress-tests` does not rebuild it, so a binary older than the sources it is built from is
/// refused rather than silently tested.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EGRESS_AGENT_BIN") {
        return path.into();
    }
    let path = target_dir().join("egress-agent");
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} not found: run `cargo build` (or `cargo xtask test`)",
                path.display()
            )
        });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    for crate_dir in ["egress-agent", "egress-ebpf", "egress-common"] {
        if let Some(newer) =
            newest_file(&workspace.join(crate_dir).join("src")).filter(|(t, _)| *t > built)
        {
            panic!(
                "{} is older than {}: run `cargo build` (or `cargo xtask test`) first",
                path.display(),
                newer.1.display()
            );
        }
    }
    path
}

/// The newest source file below `dir`, unit-test files (`tests.rs`, `tests/`) left out: a
/// change to them does not rebuild the binary.
fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "tests.rs" && e.file_name() != "tests")
        .filter_map(|e| {
            let path = e.path();
            if path.is_dir() {
                newest_file(&path)
            } else {
                Some((e.metadata().ok()?.modified().ok()?, path))
            }
        })
        .max()
}

pub struct Agent {
    child: Option<Child>,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Spawns `egress-agent <args>` in `netns` (network only: it sees the host's mounts).
    pub fn spawn(
        netns: &Netns,
        args: &[String],
        bpffs: &Path,
        state_dir: &Path,
        log_dir: &Path,
    ) -> Self {
        Self::spawn_with_capabilities(netns, args, bpffs, state_dir, log_dir, None)
    }

    /// As [`Agent::spawn`], with the bounding set (so, for root, the capabilities it starts
    /// with) limited to `capabilities` when given: what a container granted exactly those
    /// gets.
    pub fn spawn_with_capabilities(
        netns: &Netns,
        args: &[String],
        bpffs: &Path,
        state_dir: &Path,
        log_dir: &Path,
        capabilities: Option<u64>,
    ) -> Self {
        let log = log_dir.join(format!("agent-{}.log", crate::unique("")));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let netns_fd = netns.fd();
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env("RUST_LOG", "info,egress_agent=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        let raw = netns_fd.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(keep) = capabilities {
                    for cap in 0..64u32 {
                        if keep & (1 << cap) == 0
                            && libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1
                            && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn egress-agent");
        drop(netns_fd);
        Self {
            child: Some(child),
            bpffs: bpffs.to_owned(),
            state_dir: state_dir.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status_if_mine(&self) -> Option<Status> {
        status::read(&self.state_dir)
            .ok()
            .filter(|s| s.pid == self.pid())
    }

    /// Whether the agent says it enforces (ready) right now; does not wait.
    pub fn is_ready(&self) -> bool {
        self.status_if_mine().is_some_and(|s| s.ready && s.running)
    }

    /// Waits for the agent to enforce (ready), failing with its log if it exits or stalls.
    pub fn wait_ready(&mut self, timeout: Duration) -> Status {
        self.wait_for(timeout, "ready", |s| s.ready && s.running)
    }

    /// Waits until the policy with `digest` is applied.
    pub fn wait_applied(&mut self, digest: &str, timeout: Duration) -> Status {
        self.wait_for(timeout, "policy applied", |s| {
            s.policy.as_ref().is_some_and(|p| p.digest == digest)
        })
    }

    /// Waits until a reload of the file with `digest` was refused.
    pub fn wait_rejected(&mut self, digest: &str, timeout: Duration) -> Status {
        self.wait_for(timeout, "policy rejected", |s| {
            s.last_reload
                .as_ref()
                .is_some_and(|r| !r.ok && r.digest == digest)
        })
    }

    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Status) -> bool,
    ) -> Status {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status_if_mine()
                && ok(&s)
            {
                return s;
            }
            if let Some(exit) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "egress-agent exited ({exit}) before {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "egress-agent not {what} after {timeout:?}; status: {:?}\nlog:\n{}",
                status::read(&self.state_dir).ok(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the agent to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().expect("agent running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < timeout,
                "agent still running; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGHUP: reload.
    pub fn hangup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM, then waits for the exit code.
    pub fn terminate(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// `egress-agent maps --json` on this agent's pins.
    pub fn maps_json(&self) -> serde_json::Value {
        let out = Command::new(binary())
            .args(["maps", "--json", "--bpffs"])
            .arg(&self.bpffs)
            .output()
            .expect("run egress-agent maps");
        assert!(
            out.status.success(),
            "maps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("maps prints JSON")
    }

    /// `egress-agent events --json` from this agent: one JSON value per denied flow.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let out = Command::new(binary())
            .args(["events", "--json", "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .expect("run egress-agent events");
        assert!(
            out.status.success(),
            "events failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("events prints JSON lines"))
            .collect()
    }

    /// Waits until `events` satisfies `ok`; returns the last answer.
    pub fn wait_events(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let events = self.events();
            if ok(&events) {
                return events;
            }
            assert!(
                start.elapsed() < timeout,
                "no {what} after {timeout:?}; events: {events:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `egress-agent status` (the text) of this agent.
    pub fn status_text(&self) -> String {
        let out = Command::new(binary())
            .args(["status", "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .expect("run egress-agent status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `egress-agent maps` (the table) on this agent's pins.
    pub fn maps_text(&self) -> String {
        let out = Command::new(binary())
            .args(["maps", "--bpffs"])
            .arg(&self.bpffs)
            .output()
            .expect("run egress-agent maps");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
