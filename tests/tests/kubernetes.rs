//! The agent on a Kubernetes node: a kubelet cgroup tree (both cgroup drivers, every QoS
//! class) built in the real cgroup2 file system, pod metadata from a recorded Kubernetes API
//! served over HTTPS, and processes in the containers' cgroups. Each pod is enforced with
//! its own rules; a process outside the pods' root is not enforced; a new pod is enforced
//! from its first connect; an API outage (even across an agent restart) changes nothing.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use egress_tests::{
    cgroup::TestCgroup,
    kubeapi::{KubeApi, TestPod},
    probe::{self, Outcome},
    unique,
    world::{WAIT, World},
    zonesrv::Zone,
};

const NODE: &str = "node-1";

/// Node-wide: .10:8080 for everyone. team-a: .20:8080. Pods labelled app=web: .30:8080.
/// team-b: .10 denied. The ServiceEntry of team-c, exported to its own namespace: .40:8080.
const POLICY: &str = "\
apiVersion: egress/v1
kind: EgressPolicy
rules:
  - {name: everyone, cidrs: [198.51.100.10], ports: [8080]}
  - {name: team-a, cidrs: [198.51.100.20], ports: [8080], namespaces: [team-a]}
  - {name: web, cidrs: [198.51.100.30], ports: [8080], podSelector: {matchLabels: {app: web}}}
  - {name: not-b, action: deny, cidrs: [198.51.100.10], namespaces: [team-b]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reports, namespace: team-c}
spec:
  hosts: [reports.team-c.test]
  addresses: [198.51.100.40]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  exportTo: ['.']
";

const TARGETS: [&str; 5] = [
    "198.51.100.10:8080",
    "198.51.100.20:8080",
    "198.51.100.30:8080",
    "198.51.100.40:8080",
    "198.51.100.99:8080",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Clone, Copy)]
enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// One simulated pod: its API object and its container's cgroup.
struct SimPod {
    api: TestPod,
    container: PathBuf,
}

/// The pod-level and container cgroups of a pod, as the kubelet and the runtime name them.
fn pod_dirs(root: &Path, driver: Driver, qos: Qos, uid: &str, container_id: &str) -> PathBuf {
    let qos_name = match qos {
        Qos::Guaranteed => None,
        Qos::Burstable => Some("burstable"),
        Qos::BestEffort => Some("besteffort"),
    };
    let dir = match driver {
        Driver::Systemd => {
            let u = uid.replace('-', "_");
            match qos_name {
                None => root
                    .join(format!("kubepods-pod{u}.slice"))
                    .join(format!("cri-containerd-{container_id}.scope")),
                Some(q) => root
                    .join(format!("kubepods-{q}.slice"))
                    .join(format!("kubepods-{q}-pod{u}.slice"))
                    .join(format!("crio-{container_id}.scope")),
            }
        }
        Driver::Cgroupfs => match qos_name {
            None => root.join(format!("pod{uid}")).join(container_id),
            Some(q) => root.join(q).join(format!("pod{uid}")).join(container_id),
        },
    };
    std::fs::create_dir_all(&dir).expect("create the pod's cgroups");
    dir
}

fn sim_pod(root: &Path, driver: Driver, qos: Qos, n: u8, namespace: &str, app: &str) -> SimPod {
    let uid = format!("{n:08x}-1111-4222-8333-{n:012x}");
    let container_id = format!("{n:02x}").repeat(32);
    SimPod {
        api: TestPod {
            uid: uid.clone(),
            namespace: namespace.into(),
            name: format!("{app}-{n}"),
            labels: vec![("app".into(), app.into())],
            node: NODE.into(),
        },
        container: pod_dirs(root, driver, qos, &uid, &container_id),
    }
}

/// Which of [`TARGETS`] a process in `cgroup` reaches (true) or is refused (EPERM, false).
fn reach(world: &World, cgroup: &Path) -> Vec<bool> {
    let ops: Vec<(&str, &str)> = TARGETS.iter().map(|t| ("tcp", *t)).collect();
    probe::run_in(&world.pod, cgroup, &ops)
        .into_iter()
        .map(|o: Outcome| {
            assert!(o.ok || o.denied(), "neither allowed nor EPERM: {o:?}");
            o.ok
        })
        .collect()
}

/// What each pod of [`pods`] may reach: (everyone, team-a, web, team-c's entry, unlisted).
const A_TEAM_A_WEB: [bool; 5] = [true, true, true, false, false];
const B_TEAM_B_WEB: [bool; 5] = [false, false, true, false, false];
const C_TEAM_C_BATCH: [bool; 5] = [true, false, false, true, false];
/// A pod the agent knows nothing of: node-wide allows, minus every deny (team-b's too).
const UNKNOWN: [bool; 5] = [false, false, false, false, false];

fn pods(root: &Path, driver: Driver) -> Vec<SimPod> {
    vec![
        sim_pod(root, driver, Qos::Guaranteed, 1, "team-a", "web"),
        sim_pod(root, driver, Qos::Burstable, 2, "team-b", "web"),
        sim_pod(root, driver, Qos::BestEffort, 3, "team-c", "batch"),
    ]
}

/// A test world with the recorded Kubernetes API server in its world namespace.
fn node() -> (World, KubeApi) {
    let world = World::new(Zone::new()).expect("world");
    let api = KubeApi::start(
        &world.rt,
        &world.world,
        "10.200.0.1:6443".parse().unwrap(),
        world.dir(),
    )
    .expect("API server");
    (world, api)
}

fn start(world: &World, api: &KubeApi, extra: &[&str]) -> egress_tests::agent::Agent {
    let kubeconfig = api.kubeconfig.display().to_string();
    let mut args = vec!["--node-name", NODE, "--kubeconfig", &kubeconfig];
    args.extend_from_slice(extra);
    world.start_agent(&args)
}

fn wait_placed(agent: &mut egress_tests::agent::Agent, n: usize) {
    agent.wait_for(WAIT, &format!("{n} pods placed"), |s| {
        s.pods.as_ref().is_some_and(|p| p.placed == n)
    });
}

fn kubelet_node(driver: Driver) {
    let (world, api) = node();
    let root = world.cgroup.enforced.clone();
    let pods = pods(&root, driver);
    for p in &pods {
        api.apply(&p.api);
    }
    // A pod of another node: never asked for.
    api.apply(&TestPod {
        uid: "99999999-1111-4222-8333-999999999999".into(),
        namespace: "team-a".into(),
        name: "elsewhere".into(),
        labels: vec![],
        node: "node-2".into(),
    });
    // The agent's own pod (a DaemonSet's): not enforced, whatever the policy says.
    let own = sim_pod(
        &root,
        driver,
        Qos::Burstable,
        7,
        "egress-system",
        "egress-agent",
    );
    api.apply(&own.api);
    world.write_policy(POLICY);
    let mut agent = start(
        &world,
        &api,
        &[
            "--exempt-pod-uid",
            &own.api.uid,
            "--metrics",
            "10.200.0.1:0",
        ],
    );
    agent.wait_ready(WAIT);
    wait_placed(&mut agent, 3);
    let status = egress_agent::agent::status::read(&world.state_dir()).unwrap();
    let pods_status = status.pods.unwrap();
    assert!(pods_status.synced);
    assert!(
        pods_status.unplaced.is_empty(),
        "{:?}",
        pods_status.unplaced
    );

    assert_eq!(
        reach(&world, &pods[0].container),
        A_TEAM_A_WEB,
        "pod A ({driver:?})"
    );
    assert_eq!(
        reach(&world, &pods[1].container),
        B_TEAM_B_WEB,
        "pod B ({driver:?})"
    );
    assert_eq!(
        reach(&world, &pods[2].container),
        C_TEAM_C_BATCH,
        "pod C ({driver:?})"
    );
    assert_eq!(
        reach(&world, &own.container),
        [true; 5],
        "the agent's own pod"
    );
    // A denial names the pod by namespace and name, not only by cgroup.
    agent.wait_events(WAIT, "an event of pod B", |events| {
        events.iter().any(|e| {
            e["pod"] == "team-b/web-2"
                && e["destination"] == "198.51.100.10"
                && e["pod_uid"] == pods[1].api.uid.as_str()
        })
    });
    // The pod-level cgroup itself is enforced like its containers.
    let pod_level = pods[0].container.parent().unwrap();
    assert_eq!(reach(&world, pod_level), A_TEAM_A_WEB);
    // A cgroup below the root that is no pod (the test's own pod1): unknown.
    assert_eq!(reach(&world, &world.pod.cgroup), UNKNOWN);

    // Outside the pods' root nothing is enforced, not even the unlisted address.
    let outside = TestCgroup::new(&unique("egress-test-host")).expect("outside cgroup");
    assert_eq!(reach(&world, &outside.enforced), [true; 5], "host process");

    // A pod created after the agent started: the API has it before the kubelet creates its
    // cgroup, as on a real node. Its first connect is already enforced.
    let new_pod = SimPod {
        api: TestPod {
            uid: "0000000d-1111-4222-8333-00000000000d".into(),
            namespace: "team-a".into(),
            name: "late".into(),
            labels: vec![("app".into(), "web".into())],
            node: NODE.into(),
        },
        container: PathBuf::new(),
    };
    api.apply(&new_pod.api);
    let created = Instant::now();
    let container = pod_dirs(
        &root,
        driver,
        Qos::Burstable,
        &new_pod.api.uid,
        &"d".repeat(64),
    );
    let first = probe::run_in(&world.pod, &container, &[("tcp", TARGETS[4])]);
    assert!(
        first[0].denied(),
        "first connect of a new pod: {:?}",
        first[0]
    );
    wait_placed(&mut agent, 4);
    eprintln!(
        "new pod placed {} ms after its cgroup was created ({driver:?})",
        created.elapsed().as_millis()
    );
    assert_eq!(reach(&world, &container), A_TEAM_A_WEB, "new pod");

    // The explain CLI works the class out from the cgroup as the kernel does.
    let out = std::process::Command::new(egress_tests::agent::binary())
        .args(["explain", TARGETS[1], "--bpffs"])
        .arg(&world.bpffs)
        .arg("--cgroup")
        .arg(&pods[0].container)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": allowed (entry) [class"), "{text}");
    let out = std::process::Command::new(egress_tests::agent::binary())
        .args(["explain", TARGETS[1], "--bpffs"])
        .arg(&world.bpffs)
        .arg("--cgroup")
        .arg(&pods[2].container)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": denied (no_entry)"), "{text}");

    let status = agent.wait_for(WAIT, "metrics address", |s| s.metrics.is_some());
    let (code, body) = world.http_get(&format!("http://{}/metrics", status.metrics.unwrap()));
    assert_eq!(code, 200);
    for line in [
        "egress_pods{state=\"placed\"} 4",
        "egress_pods{state=\"unplaced\"} 0",
        "egress_pod_metadata_synced 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} not in:\n{body}");
    }

    let asked: Vec<String> = api.requests();
    assert!(
        asked
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "the agent asks for its node's pods only: {asked:?}"
    );
    drop(agent);
}

#[test]
fn systemd_driver_pods_get_their_own_rules() {
    kubelet_node(Driver::Systemd);
}

#[test]
fn cgroupfs_driver_pods_get_their_own_rules() {
    kubelet_node(Driver::Cgroupfs);
}

/// API unavailable: the last known mapping stays, also across an agent restart; when the
/// API is back, a deleted pod loses its placement (and gets the unknown class).
#[test]
fn api_outage_keeps_the_last_known_pods() {
    let (world, api) = node();
    let pods = pods(&world.cgroup.enforced, Driver::Systemd);
    for p in &pods {
        api.apply(&p.api);
    }
    world.write_policy(POLICY);
    let mut agent = start(&world, &api, &["--resolve-wait", "1s"]);
    agent.wait_ready(WAIT);
    wait_placed(&mut agent, 3);
    let expected = [A_TEAM_A_WEB, B_TEAM_B_WEB, C_TEAM_C_BATCH];
    let check = |why: &str| {
        for (p, want) in pods.iter().zip(expected) {
            assert_eq!(reach(&world, &p.container), want, "{} {why}", p.api.name);
        }
    };

    api.set_down(true);
    let down = Instant::now();
    while !agent.log().contains("Kubernetes API unavailable") {
        assert!(
            down.elapsed() < WAIT,
            "outage not noticed:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check("while the API is down");

    // A restart while the API is still down: the pods are placed from the kept copy.
    agent.terminate();
    let mut agent = start(&world, &api, &["--resolve-wait", "1s"]);
    agent.wait_ready(WAIT);
    wait_placed(&mut agent, 3);
    check("after a restart while the API is down");
    let status = egress_agent::agent::status::read(&world.state_dir()).unwrap();
    assert!(!status.pods.unwrap().synced, "not listed by this run yet");

    // Back up: the watch resumes, and a pod deleted meanwhile goes.
    api.delete(&pods[1].api.uid);
    api.set_down(false);
    wait_placed(&mut agent, 2);
    assert_eq!(reach(&world, &pods[1].container), UNKNOWN, "deleted pod");
    assert_eq!(reach(&world, &pods[0].container), A_TEAM_A_WEB);
}

/// Classes that do not fit the maps never freeze placements: once they stop fitting, every
/// pod falls back to the unknown class (node-wide allows minus every deny) — a placed pod
/// loses its scoped allowance rather than keeping it — and the status says why.
#[test]
fn classes_that_do_not_fit_give_every_pod_the_unknown_class() {
    let (world, api) = node();
    let pods = pods(&world.cgroup.enforced, Driver::Systemd);
    // Pod B alone fits: its class needs two entries beside the node-wide and unknown ones.
    api.apply(&pods[1].api);
    world.write_policy(POLICY);
    let mut agent = start(&world, &api, &["--max-entries", "6"]);
    agent.wait_ready(WAIT);
    wait_placed(&mut agent, 1);
    assert_eq!(reach(&world, &pods[1].container), B_TEAM_B_WEB);
    // Two more pods with classes of their own: no longer fits.
    api.apply(&pods[0].api);
    api.apply(&pods[2].api);
    let status = agent.wait_for(WAIT, "the fallback reported", |s| {
        s.problems.iter().any(|p| p.contains("do not fit the maps"))
    });
    assert_eq!(status.pods.unwrap().placed, 0, "{:?}", status.problems);
    for p in &pods {
        assert_eq!(reach(&world, &p.container), UNKNOWN, "{}", p.api.name);
    }
    // Room again (pod A goes): placements come back.
    api.delete(&pods[0].api.uid);
    api.delete(&pods[2].api.uid);
    wait_placed(&mut agent, 1);
    assert_eq!(reach(&world, &pods[1].container), B_TEAM_B_WEB);
}
