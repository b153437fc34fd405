//! The README's main job: an Istio-style egress lockdown, enforced in the kernel, on a world
//! built on this machine (no cluster): a "pod" (its own network namespace and cgroup) and an
//! "internet" namespace where www.googleapis.com serves HTTPS and a DNS server answers.
//!
//! 1. REGISTRY_ONLY, nothing allowed: curl from the pod is refused at connect() (EPERM); the
//!    denial is an event (`egress-agent events`) and a metric;
//! 2. the reference ServiceEntry is written to the policy file the running agent watches:
//!    the same curl succeeds, other names and ports stay refused, and `explain` says why;
//! 3. `egress-agent maps` shows what the kernel enforces.
//!
//! Exits non-zero if any step does not behave as described.

use std::{
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use egress_tests::{probe, world::World, zonesrv::Zone};

use egress_tests::examples::{REGISTRY_ONLY, SERVICE_ENTRY};

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

struct Demo {
    world: World,
    failures: Vec<String>,
}

impl Demo {
    /// Runs curl in the pod and reports; `expect_ok` says what the step expects.
    fn curl(&mut self, url: &str, expect_ok: bool) {
        let started = Instant::now();
        let (code, out) = self.world.curl(&[url]);
        let took = started.elapsed();
        println!("    $ curl {url}");
        let verdict = if code == 0 {
            format!("ALLOWED  (exit 0 after {took:.0?}): {}", out.trim())
        } else {
            format!(
                "DENIED   (curl exit {code} after {took:.0?}): {}",
                out.trim()
            )
        };
        println!("      {verdict}");
        if (code == 0) != expect_ok {
            self.failures.push(format!("curl {url}: {verdict}"));
        }
    }

    /// `egress-agent <args>`, printed (as run) and its output indented; returns the output.
    fn cli(&mut self, args: &[&str], shown: &str) -> String {
        println!("    $ egress-agent {}", args.join(" "));
        match Command::new(egress_tests::agent::binary())
            .args(args)
            .output()
        {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                print!("{}", indent(&text));
                if !out.status.success() {
                    self.failures.push(format!(
                        "egress-agent {shown}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                text
            }
            Err(e) => {
                self.failures.push(format!("egress-agent {shown}: {e}"));
                String::new()
            }
        }
    }

    /// The denial metric lines of the Prometheus endpoint.
    fn metric(&mut self, base: &str) {
        println!(
            "    $ curl -s {base}/metrics | grep 'egress_verdicts_total{{verdict=\"deny\"' | grep -v ' 0$'"
        );
        let (code, body) = self.world.http_get(&format!("{base}/metrics"));
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| {
                l.starts_with("egress_verdicts_total{verdict=\"deny\"") && !l.ends_with(" 0")
            })
            .collect();
        for l in &lines {
            println!("      {l}");
        }
        if code != 200 || lines.is_empty() {
            self.failures
                .push(format!("metrics: HTTP {code}, no denial counted"));
        }
    }

    fn connect(&mut self, addr: &str, expect_ok: bool) {
        let o = probe::one(&self.world.pod, "tcp", addr);
        let what = if o.ok {
            "connected".to_owned()
        } else if o.denied() {
            "EPERM (refused by the kernel program)".to_owned()
        } else {
            format!("errno {}", o.errno)
        };
        println!("    connect({addr}) -> {what}");
        if o.ok != expect_ok || (!expect_ok && !o.denied()) {
            self.failures.push(format!("connect {addr}: {what}"));
        }
    }
}

fn main() -> ExitCode {
    println!("egress-agent demo: Istio egress lockdown, enforced in the kernel\n");
    let mut zone = Zone::new();
    zone.set(
        "www.googleapis.com",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    )
    .set(
        "storage.googleapis.com",
        &["198.51.100.11", "2001:db8:100::11"],
        300,
    );
    let world = match World::new(zone) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot build the demo world: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "  world: pod netns {} in cgroup {}",
        world.pod_ns.name,
        world.cgroup.pod().display()
    );
    println!(
        "         internet netns {}: www.googleapis.com = 198.51.100.10, 2001:db8:100::10 (HTTPS on 443, HTTP on 80)",
        world.world.name
    );
    println!(
        "         storage.googleapis.com = 198.51.100.11 (same host); DNS server 10.200.0.53\n"
    );
    let mut demo = Demo {
        world,
        failures: Vec::new(),
    };

    println!("[1] policy: Istio mesh setting, nothing allowed");
    print!("{}", indent(REGISTRY_ONLY));
    demo.world.write_policy(REGISTRY_ONLY);
    let mut agent = demo.world.start_agent(&["--metrics", "127.0.0.1:0"]);
    agent.wait_ready(Duration::from_secs(20));
    let metrics = agent.wait_for(Duration::from_secs(20), "metrics", |s| s.metrics.is_some());
    let base = format!("http://{}", metrics.metrics.unwrap_or_default());
    let state = demo.world.state_dir().display().to_string();
    let bpffs = demo.world.bpffs.display().to_string();
    println!(
        "    egress-agent run --policy {} --cgroup {} (pid {})",
        demo.world.policy_path().display(),
        demo.world.cgroup.enforced.display(),
        agent.pid()
    );
    demo.world.sniffer.clear();
    demo.curl("https://www.googleapis.com/storage/v1/b", false);
    demo.connect("198.51.100.10:443", false);
    let packets = demo
        .world
        .sniffer
        .to("198.51.100.10".parse().unwrap())
        .len();
    println!("    packets that reached 198.51.100.10: {packets}");
    if packets != 0 {
        demo.failures
            .push(format!("{packets} packets reached the host while denied"));
    }
    // Every denial counted in the flows (the reader folds the kernel's counts in each second).
    let denied = agent.maps_json()["counters"]["deny_no_entry"]
        .as_u64()
        .unwrap_or(0);
    agent.wait_events(Duration::from_secs(10), "every denial in the events", |e| {
        e.iter()
            .map(|f| f["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == denied
    });
    demo.cli(&["events", "--state-dir", &state], "events");
    demo.metric(&base);
    println!();

    println!("[2] policy: the ServiceEntry, written to the watched file (no restart)");
    print!("{}", indent(SERVICE_ENTRY));
    let started = Instant::now();
    let digest = demo.world.write_policy(SERVICE_ENTRY);
    agent.wait_applied(&digest, Duration::from_secs(20));
    println!("    applied in {:.0?}", started.elapsed());
    demo.curl("https://www.googleapis.com/storage/v1/b", true);
    demo.curl("https://storage.googleapis.com/", false);
    demo.curl("http://www.googleapis.com:80/", false);
    demo.connect("198.51.100.10:443", true);
    demo.connect("198.51.100.10:80", false);
    let why = demo.cli(
        &["explain", "198.51.100.10:80", "--bpffs", &bpffs],
        "explain 198.51.100.10:80",
    );
    if !why.contains("denied (wrong_port)") {
        demo.failures.push(format!("explain: {why}"));
    }
    println!();

    println!(
        "[3] egress-agent maps --bpffs {}",
        demo.world.bpffs.display()
    );
    let maps = Command::new(egress_tests::agent::binary())
        .args(["maps", "--bpffs"])
        .arg(&demo.world.bpffs)
        .output();
    match maps {
        Ok(out) => print!("{}", indent(&String::from_utf8_lossy(&out.stdout))),
        Err(e) => demo.failures.push(format!("egress-agent maps: {e}")),
    }
    drop(agent);

    if demo.failures.is_empty() {
        println!("\ndemo passed: denied -> allowed, in the kernel, without a restart");
        ExitCode::SUCCESS
    } else {
        println!("\ndemo FAILED:");
        for f in &demo.failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
