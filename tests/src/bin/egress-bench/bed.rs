//! The bench bed: a world namespace holding the "internet" (AnyIP prefixes on its loopback),
//! a TCP server and a DNS server, and client namespaces each joined to it by its own veth
//! pair. Nothing captures packets here (the test world's sniffer would tax every packet).
//!
//! ```text
//!  client ns i: c0 10.250.i.2/24, fd00:250:i::2/64 <--veth--> world: w<i> 10.250.i.1, fd00:250:i::1
//!  world: 198.51.100.0/24 and 2001:db8::/32 local (AnyIP); TCP accept on [::]:9000;
//!         DNS (zonesrv) on 10.250.0.53:53 (on its loopback)
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use egress_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    netns::Netns,
    pod::Pod,
    sh, unique,
    zonesrv::{Zone, ZoneServer},
};

/// The port of the world's TCP server (UDP connects use it too; no datagram is sent).
pub const PORT: u16 = 9000;
/// The world's DNS server.
pub const DNS: &str = "10.250.0.53";
/// Local in the world, routed to it from every client namespace.
const INTERNET_V4: &str = "198.51.100.0/24";
const INTERNET_V6: &str = "2001:db8::/32";

pub struct Bed {
    pub id: String,
    pub world: Netns,
    pub rt: tokio::runtime::Runtime,
    pub dir: PathBuf,
    clients: std::cell::Cell<u8>,
}

/// A client namespace with its veth pair, and a resolv.conf for pods in it.
pub struct Client {
    pub ns: Netns,
    pub resolv: PathBuf,
}

impl Bed {
    pub fn new() -> anyhow::Result<Self> {
        let id = unique("egb");
        let world = Netns::new(&format!("{id}-w"))?;
        world.ip(&["route", "add", "local", INTERNET_V4, "dev", "lo"])?;
        world.ip(&["-6", "route", "add", "local", INTERNET_V6, "dev", "lo"])?;
        world.ip(&["addr", "add", &format!("{DNS}/32"), "dev", "lo"])?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        // Two accept threads and a deep accept queue (listen again: std listens with 128): a
        // full queue drops SYNs, and a dropped SYN costs a second (the retransmission timer)
        // — the server must never be what a TCP round waits for.
        let listener = world.run(|| std::net::TcpListener::bind(("::", PORT)))??;
        // SAFETY: listen on a socket this process owns.
        if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) } != 0 {
            anyhow::bail!("listen: {}", std::io::Error::last_os_error());
        }
        for _ in 0..2 {
            let l = listener.try_clone()?;
            std::thread::spawn(move || while l.accept().is_ok() {});
        }
        let bed = Self {
            id,
            world,
            rt,
            dir,
            clients: std::cell::Cell::new(0),
        };
        Ok(bed)
    }

    /// A new client namespace, joined to the world by its own veth pair.
    pub fn client(&self) -> anyhow::Result<Client> {
        let i = self.clients.get();
        self.clients.set(i + 1);
        let ns = Netns::new(&format!("{}-c{i}", self.id))?;
        let w = format!("w{i}");
        sh(
            "ip",
            &[
                "link",
                "add",
                "c0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &w,
                "netns",
                &self.world.name,
            ],
        )?;
        self.world
            .ip(&["addr", "add", &format!("10.250.{i}.1/24"), "dev", &w])?;
        self.world.ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd00:250:{i}::1/64"),
            "dev",
            &w,
            "nodad",
        ])?;
        self.world.ip(&["link", "set", &w, "up"])?;
        ns.ip(&["addr", "add", &format!("10.250.{i}.2/24"), "dev", "c0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd00:250:{i}::2/64"),
            "dev",
            "c0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "c0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.250.{i}.1")])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:250:{i}::1"),
        ])?;
        let resolv = self.dir.join(format!("resolv-{i}.conf"));
        std::fs::write(&resolv, format!("nameserver {DNS}\n"))?;
        Ok(Client { ns, resolv })
    }

    /// A fresh cgroup (`<cgroup2>/egress-bench-<id>-<name>/pod1` is where workers run).
    pub fn cgroup(&self, name: &str) -> anyhow::Result<TestCgroup> {
        TestCgroup::new(&format!("egress-bench-{}-{name}", self.id))
    }

    /// Serves `zone` on [`DNS`] for as long as the server lives.
    pub fn dns(&self, zone: Zone) -> anyhow::Result<ZoneServer> {
        ZoneServer::start(
            &self.rt,
            &self.world,
            SocketAddr::new(DNS.parse()?, 53),
            zone,
        )
    }

    /// Starts `egress-agent run` in the world namespace on `cgroup`, with its own pins,
    /// state directory and policy file (`name` tells them apart).
    pub fn agent(
        &self,
        name: &str,
        cgroup: &TestCgroup,
        policy: &str,
        extra: &[&str],
    ) -> anyhow::Result<RunningAgent> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let policy_path = dir.join("policy.yaml");
        std::fs::write(&policy_path, policy)?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("egress-bench-{}-{name}", self.id));
        let state = dir.join("state");
        let mut args: Vec<String> = [
            "run",
            "--policy",
            &policy_path.display().to_string(),
            "--cgroup",
            &cgroup.enforced.display().to_string(),
            "--bpffs",
            &bpffs.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
            "--dns-server",
            DNS,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let command = format!(
            "ip netns exec {} {} {}",
            self.world.name,
            egress_tests::agent::binary().display(),
            args.join(" ")
        );
        let agent = Agent::spawn(&self.world, &args, &bpffs, &state, &dir);
        Ok(RunningAgent {
            agent,
            policy_path,
            command,
        })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Client {
    pub fn pod(&self, cgroup: &TestCgroup) -> Pod {
        Pod::new(&cgroup.pod(), &self.ns, &self.resolv)
    }

    /// Runs a shell command line in this namespace (nft, iptables-restore).
    pub fn exec_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: &Path,
    ) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, program])
            .args(args)
            .stdin(std::fs::File::open(input)?)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{program} {} in {} failed: {}",
            args.join(" "),
            self.ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

/// An agent of the bench, with its pins detached and removed when dropped.
pub struct RunningAgent {
    pub agent: Agent,
    pub policy_path: PathBuf,
    /// The command line it was started with.
    pub command: String,
}

impl RunningAgent {
    /// Replaces the policy file the way config tools do (write, rename).
    pub fn write_policy(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.policy_path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.policy_path)?;
        Ok(())
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.agent.kill9();
        let bpffs = self.agent.bpffs.clone();
        if bpffs.exists() {
            let _ = Command::new(egress_tests::agent::binary())
                .args(["detach", "--bpffs"])
                .arg(&bpffs)
                .output();
            let _ = std::fs::remove_dir_all(&bpffs);
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
