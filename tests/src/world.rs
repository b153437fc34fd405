//! The test bed: a world namespace (internet hosts, DNS, the agent), a pod namespace, the
//! enforced cgroup, and the servers and capture that tell what got through.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::runtime::Runtime;

use crate::{
    agent::Agent,
    cgroup::TestCgroup,
    netns::Netns,
    pod::Pod,
    servers::{self, Hits, Service},
    sniffer::Sniffer,
    tls::TestCa,
    unique,
    zonesrv::{Zone, ZoneServer},
};

/// The DNS server's address, inside the world namespace.
pub const DNS: &str = "10.200.0.53";
/// Prefixes every address of which is a host of the world ("AnyIP" local routes).
pub const INTERNET_V4: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "100.64.0.0/10",
];
pub const INTERNET_V6: &str = "2001:db8:100::/64";
/// Names the test CA's certificate covers.
pub const TLS_NAMES: [&str; 4] = [
    "www.googleapis.com",
    "storage.googleapis.com",
    "api.allowed.test",
    "evil.test",
];
/// TCP ports with an echo server.
pub const ECHO_PORTS: [u16; 6] = [22, 5432, 7443, 8080, 27017, 9000];
/// UDP ports with an echo server.
pub const UDP_PORTS: [u16; 4] = [123, 443, 8005, 9999];

pub struct World {
    pub rt: Runtime,
    pub world: Netns,
    pub pod_ns: Netns,
    pub cgroup: TestCgroup,
    /// Scratch directory: policy, state, CA, resolv.conf, logs.
    pub dir: PathBuf,
    /// The agent's pin directory (on bpffs).
    pub bpffs: PathBuf,
    pub dns: ZoneServer,
    pub hits: Hits,
    pub sniffer: Sniffer,
    pub ca_file: PathBuf,
    pub pod: Pod,
}

/// How long tests wait at most for the agent to start or apply a policy (generous: the same
/// tests run in emulated VMs, many times slower; a passing test waits only as long as needed).
pub const WAIT: Duration = Duration::from_secs(60);

/// A native policy document with the given rules (YAML list items, indented by two).
pub fn native(rules: &str) -> String {
    format!("apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n{rules}")
}

impl World {
    /// A world whose agent enforces `policy` (started, ready).
    pub fn enforcing(zone: Zone, policy: &str, agent_args: &[&str]) -> (Self, Agent) {
        let world = Self::new(zone).expect("build the test world");
        world.write_policy(policy);
        let mut agent = world.start_agent(agent_args);
        agent.wait_ready(WAIT);
        (world, agent)
    }

    /// Builds the world; `zone` is what the DNS server serves (`evil.test` is always added).
    pub fn new(mut zone: Zone) -> anyhow::Result<Self> {
        crate::require_root();
        let id = unique("eg");
        let world = Netns::new(&format!("{id}-w"))?;
        let pod_ns = Netns::new(&format!("{id}-p"))?;
        // The pair is created directly in the two namespaces: no name in the host's.
        crate::sh(
            "ip",
            &[
                "link",
                "add",
                "p0",
                "netns",
                &pod_ns.name,
                "type",
                "veth",
                "peer",
                "name",
                "w0",
                "netns",
                &world.name,
            ],
        )?;
        world.ip(&["addr", "add", "10.200.0.1/24", "dev", "w0"])?;
        world.ip(&["addr", "add", &format!("{DNS}/24"), "dev", "w0"])?;
        world.ip(&["-6", "addr", "add", "fd00:200::1/64", "dev", "w0", "nodad"])?;
        world.ip(&["link", "set", "w0", "up"])?;
        pod_ns.ip(&["addr", "add", "10.200.0.2/24", "dev", "p0"])?;
        pod_ns.ip(&["-6", "addr", "add", "fd00:200::2/64", "dev", "p0", "nodad"])?;
        pod_ns.ip(&["link", "set", "p0", "up"])?;
        pod_ns.ip(&["route", "add", "default", "via", "10.200.0.1"])?;
        pod_ns.ip(&["-6", "route", "add", "default", "via", "fd00:200::1"])?;
        for p in INTERNET_V4 {
            world.ip(&["route", "add", "local", p, "dev", "lo"])?;
        }
        world.ip(&["-6", "route", "add", "local", INTERNET_V6, "dev", "lo"])?;
        for ns in [&world, &pod_ns] {
            ns.sysctl("net.ipv4.tcp_fastopen", "3")?;
        }

        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let cgroup = TestCgroup::new(&format!("egress-test-{id}"))?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("egress-test-{id}"));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        zone.set("evil.test", &["203.0.113.66", "2001:db8:100::66"], 300);
        let dns = ZoneServer::start(&rt, &world, SocketAddr::new(DNS.parse()?, 53), zone)?;
        let ca = TestCa::new(&TLS_NAMES)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem)?;
        let hits = Hits::default();
        servers::tcp(&rt, &world, 80, Service::Http, hits.clone())?;
        servers::tcp(
            &rt,
            &world,
            443,
            Service::Https(ca.server_config.clone()),
            hits.clone(),
        )?;
        for port in ECHO_PORTS.into_iter().chain(7999..=8011) {
            servers::tcp(&rt, &world, port, Service::Echo, hits.clone())?;
        }
        for port in UDP_PORTS {
            servers::udp(&rt, &world, port, hits.clone())?;
        }
        let sniffer = Sniffer::start(&world, "w0")?;
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {DNS}\noptions timeout:1 attempts:2\n"),
        )?;
        let pod = Pod::new(&cgroup.pod(), &pod_ns, &resolv);
        // Let IPv6 neighbour discovery settle before anything measures latency.
        std::thread::sleep(Duration::from_millis(50));
        Ok(Self {
            rt,
            world,
            pod_ns,
            cgroup,
            dir,
            bpffs,
            dns,
            hits,
            sniffer,
            ca_file,
            pod,
        })
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Replaces the policy file the way editors and config tools do: write a temporary file,
    /// rename it over the old one. Returns the content's digest.
    pub fn write_policy(&self, text: &str) -> String {
        let tmp = self.dir.join(".policy.yaml.tmp");
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.policy_path()).expect("rename policy");
        egress_agent::policy::digest(text)
    }

    /// Starts the agent (in the world namespace, resolving through zonesrv) on this world's
    /// cgroup, policy file, pins and state directory, with `extra` arguments.
    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        self.start_agent_with_capabilities(extra, None)
    }

    /// As [`World::start_agent`], the agent starting with only `capabilities` (a mask).
    pub fn start_agent_with_capabilities(
        &self,
        extra: &[&str],
        capabilities: Option<u64>,
    ) -> Agent {
        let mut args: Vec<String> = [
            "run",
            "--policy",
            &self.policy_path().display().to_string(),
            "--cgroup",
            &self.cgroup.enforced.display().to_string(),
            "--bpffs",
            &self.bpffs.display().to_string(),
            "--state-dir",
            &self.state_dir().display().to_string(),
            "--dns-server",
            DNS,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Agent::spawn_with_capabilities(
            &self.world,
            &args,
            &self.bpffs,
            &self.state_dir(),
            &self.dir,
            capabilities,
        )
    }

    /// curl in the pod; returns (exit code, stdout).
    pub fn curl(&self, args: &[&str]) -> (i32, String) {
        let out = self
            .pod
            .command("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&self.ca_file)
            .args(args)
            .output()
            .expect("curl runs");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// An HTTP GET with curl from the world namespace (where the agent runs): status code
    /// and body.
    pub fn http_get(&self, url: &str) -> (u16, String) {
        let url = url.to_owned();
        let out = self
            .world
            .run(move || {
                std::process::Command::new("curl")
                    .args(["-s", "-w", "\n%{http_code}", &url])
                    .output()
            })
            .expect("enter the world namespace")
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Pins an agent left behind (a test's last agent may have been killed).
        if self.bpffs.exists() {
            let _ = std::process::Command::new(crate::agent::binary())
                .args(["detach", "--bpffs"])
                .arg(&self.bpffs)
                .output();
            let _ = std::fs::remove_dir_all(&self.bpffs);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
