//! A Kubernetes API server for the Pods of one node, as far as the agent uses it: HTTPS with
//! a bearer token, `GET /api/v1/pods?fieldSelector=spec.nodeName=…` (a PodList) and the same
//! with `watch=true` (a chunked stream of watch events from a resourceVersion). Responses are
//! shaped as a real API server's (recorded from kube-apiserver 1.33 and replayed with the
//! test's pods), so the agent's kube-rs client, its TLS and HTTP stack and its watcher run
//! unchanged. It can also go down (every request refused, streams cut) and come back.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    runtime::Runtime,
    sync::mpsc,
};

use crate::{netns::Netns, tls::TestCa};

pub const TOKEN: &str = "egress-test-token";

/// A pod as the test declares it.
#[derive(Clone, Debug)]
pub struct TestPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub node: String,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// UID → the pod object as last served.
    pods: BTreeMap<String, Value>,
    /// Every change: (resourceVersion, event JSON), for watches that start behind.
    log: Vec<(u64, Value)>,
    watchers: Vec<mpsc::UnboundedSender<(u64, Value)>>,
    down: bool,
    /// Request lines served (method and target).
    requests: Vec<String>,
}

pub struct KubeApi {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    state: Arc<Mutex<State>>,
}

impl KubeApi {
    /// Starts the server in `netns` on `addr`; writes a kubeconfig for it into `dir`.
    pub fn start(
        rt: &Runtime,
        netns: &Netns,
        addr: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let ca = TestCa::for_ip(addr.ip())?;
        let listener = netns.run(move || std::net::TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {}\nusers:\n- name: agent\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: agent}}\ncurrent-context: test\n",
                base64(ca.ca_pem.as_bytes())
            ),
        )?;
        let state = Arc::new(Mutex::new(State {
            resource_version: 1000,
            ..State::default()
        }));
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config.clone());
        let shared = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, state).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            kubeconfig,
            state,
        })
    }

    /// Adds or updates a pod (an ADDED or MODIFIED event).
    pub fn apply(&self, pod: &TestPod) {
        let mut s = self.state.lock().unwrap();
        s.resource_version += 1;
        let rv = s.resource_version;
        let object = pod_object(pod, rv);
        let kind = if s.pods.contains_key(&pod.uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.pods.insert(pod.uid.clone(), object.clone());
        publish(&mut s, rv, json!({"type": kind, "object": object}));
    }

    /// Deletes a pod (a DELETED event).
    pub fn delete(&self, uid: &str) {
        let mut s = self.state.lock().unwrap();
        let Some(mut object) = s.pods.remove(uid) else {
            return;
        };
        s.resource_version += 1;
        let rv = s.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        publish(&mut s, rv, json!({"type": "DELETED", "object": object}));
    }

    /// Takes the server down (every request gets 503, open watches are cut) or up again.
    pub fn set_down(&self, down: bool) {
        let mut s = self.state.lock().unwrap();
        s.down = down;
        if down {
            s.watchers.clear();
        }
    }

    /// The request lines served so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn publish(s: &mut State, rv: u64, event: Value) {
    s.log.push((rv, event.clone()));
    s.watchers.retain(|w| w.send((rv, event.clone())).is_ok());
}

/// A Pod as kube-apiserver serves it (the fields kubectl shows for a running pod).
fn pod_object(p: &TestPod, rv: u64) -> Value {
    let labels: serde_json::Map<String, Value> = p
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{}-rs", p.name),
                "uid": "6a1f3c2e-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}}}
            }]
        },
        "spec": {
            "containers": [{
                "name": "app", "image": "registry.example/app:1.0",
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "nodeName": p.node, "securityContext": {}, "schedulerName": "default-scheduler",
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.5", "podIP": "10.244.1.7",
            "qosClass": "Burstable", "startTime": "2026-12-01T10:00:01Z"
        }
    })
}

/// One connection: requests until the client closes it (a watch keeps it until it ends).
async fn serve<S>(stream: S, state: Arc<Mutex<State>>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut authorized = false;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
                && value.trim() == format!("Bearer {TOKEN}")
            {
                authorized = true;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        let down = {
            let mut s = state.lock().unwrap();
            s.requests.push(request_line.trim_end().to_owned());
            s.down
        };
        if down {
            return respond(
                &mut stream,
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    "the test took the API server down",
                ),
            )
            .await;
        }
        if !authorized {
            respond(
                &mut stream,
                401,
                &status(401, "Unauthorized", "Unauthorized"),
            )
            .await?;
            continue;
        }
        if path != "/api/v1/pods" {
            respond(
                &mut stream,
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
            .await?;
            continue;
        }
        let node = params
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("spec.nodeName="))
            .map(str::to_owned);
        let on_node =
            move |pod: &Value| node.as_deref().is_none_or(|n| pod["spec"]["nodeName"] == n);
        if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let backlog: Vec<(u64, Value)> = {
                let mut s = state.lock().unwrap();
                s.watchers.push(tx);
                s.log.iter().filter(|(rv, _)| *rv > from).cloned().collect()
            };
            stream
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            let mut sent = from;
            for (rv, event) in backlog {
                if on_node(&event["object"]) {
                    chunk(&mut stream, &event).await?;
                }
                sent = rv;
            }
            // The stream ends when the server goes down (its sender is dropped).
            while let Some((rv, event)) = rx.recv().await {
                if rv > sent && on_node(&event["object"]) {
                    chunk(&mut stream, &event).await?;
                }
            }
            return Ok(());
        }
        let (items, rv) = {
            let s = state.lock().unwrap();
            let items: Vec<Value> = s.pods.values().filter(|p| on_node(p)).cloned().collect();
            (items, s.resource_version)
        };
        let list = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        });
        respond(&mut stream, 200, &list).await?;
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

async fn respond<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    code: u16,
    body: &Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body)?;
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = stream.get_mut();
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    s.flush().await
}

async fn chunk<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    event: &Value,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    let s = stream.get_mut();
    s.write_all(format!("{:x}\r\n", line.len()).as_bytes())
        .await?;
    s.write_all(&line).await?;
    s.write_all(b"\r\n").await?;
    s.flush().await
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_percent_decoding() {
        assert_eq!(super::base64(b"Man"), "TWFu");
        assert_eq!(super::base64(b"Ma"), "TWE=");
        assert_eq!(super::base64(b"M"), "TQ==");
        assert_eq!(
            super::percent_decode("spec.nodeName%3Dnode-1"),
            "spec.nodeName=node-1"
        );
    }
}
