//! Pod metadata from the Kubernetes API: the Pods of this node (`spec.nodeName`), watched
//! with kube-rs, as pod UID → namespace, name and labels.
//!
//! An API outage changes nothing here: the watcher retries with exponential backoff, and
//! the last known mapping stays in force (also across agent restarts, through the copy in
//! the state directory). A relist after an outage replaces the mapping as a whole, so pods
//! deleted meanwhile go.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;

use crate::policy::PodMeta;

/// What the agent knows of the node's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodIndex {
    /// Pod UID → metadata.
    pub pods: BTreeMap<String, StoredPod>,
    /// Whether the mapping comes from a complete listing by this agent (not only from the
    /// copy a previous run left).
    #[serde(skip)]
    pub synced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredPod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl StoredPod {
    pub fn meta(&self) -> PodMeta {
        PodMeta {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// A kubeconfig file; without one, the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The UID of the agent's own pod, which is not enforced (`--exempt-pod-uid`).
    pub exempt_pod: Option<String>,
}

/// A client for the API server.
pub async fn client(settings: &ApiSettings) -> anyhow::Result<Client> {
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("bad kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| {
            anyhow::anyhow!("no in-cluster service account (give --kubeconfig): {e}")
        })?,
    };
    // The client's own retries of 503s back off for up to minutes without a word; the
    // watcher's backoff (capped at 30 s) retries instead, and the outage is reported.
    config.default_retry = false;
    // An API server that accepts and never answers must not stall the watch for good: the
    // watch asks the server to end each request after 55 s, and a read waits at most 70 s.
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    config.read_timeout = Some(std::time::Duration::from_secs(70));
    Ok(Client::try_from(config)?)
}

/// Watches the node's Pods and publishes the index on every change; runs until the
/// receiver side is gone.
pub async fn watch_pods(client: Client, node: String, index: watch::Sender<PodIndex>) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .timeout(55);
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listing: Option<BTreeMap<String, StoredPod>> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Kubernetes API unavailable; keeping the last known pods and retrying");
                }
                failing = true;
                continue;
            }
        };
        // `Init` comes before the listing is tried; anything else is an answer.
        if failing && !matches!(event, watcher::Event::Init) {
            tracing::info!("Kubernetes API reachable again");
            failing = false;
        }
        match event {
            watcher::Event::Init => listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(list), Some((uid, p))) = (listing.as_mut(), stored(&pod)) {
                    list.insert(uid, p);
                }
            }
            watcher::Event::InitDone => {
                let pods = listing.take().unwrap_or_default();
                tracing::info!(pods = pods.len(), %node, "pods of this node listed");
                index.send_modify(|i| {
                    i.pods = pods;
                    i.synced = true;
                });
            }
            watcher::Event::Apply(pod) => {
                if let Some((uid, p)) = stored(&pod) {
                    index.send_if_modified(|i| i.pods.insert(uid, p.clone()) != Some(p));
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    index.send_if_modified(|i| i.pods.remove(uid).is_some());
                }
            }
        }
        if index.is_closed() {
            return;
        }
    }
}

fn stored(pod: &Pod) -> Option<(String, StoredPod)> {
    let m = &pod.metadata;
    Some((
        m.uid.clone()?,
        StoredPod {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
        },
    ))
}

/// Where the index is kept between runs.
pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("pods.json")
}

/// The index a previous run left (not synced), or an empty one.
pub fn load_cached(state_dir: &Path) -> PodIndex {
    let path = cache_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<PodIndex>(&bytes) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable pod cache");
                PodIndex::default()
            }
        },
        Err(_) => PodIndex::default(),
    }
}

/// Writes the index for the next run: readable by the agent only, replaced atomically.
pub fn store_cached(state_dir: &Path, index: &PodIndex) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(index).map_err(std::io::Error::other)?;
    crate::bpf::fs::write_private(&cache_path(state_dir), &bytes)
}
