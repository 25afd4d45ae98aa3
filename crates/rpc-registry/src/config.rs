//! Typed configuration on the registry: a value stored as JSON under `config/{name}`, read into
//! any serde type, followed as it changes, with its history and rollback by revision.

use crate::{
    api::{EventKind, RangeRequest, WatchCreate},
    ClientError, ErrorCode, RegistryClient, RegistryError,
};
use futures_util::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use tokio::{sync::watch, task::JoinHandle};

/// Where configuration lives in the key space.
pub const CONFIG_PREFIX: &str = "config/";

/// One revision of a configuration value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRevision {
    /// The revision that wrote it.
    pub revision: u64,
    /// The JSON stored; empty where the value was deleted.
    pub json: String,
}

fn key(name: &str) -> Vec<u8> {
    format!("{CONFIG_PREFIX}{name}").into_bytes()
}

fn invalid(message: String) -> ClientError {
    ClientError::Registry(RegistryError::new(ErrorCode::InvalidRequest, message))
}

fn parse<T: DeserializeOwned>(name: &str, revision: u64, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("config {name:?} at revision {revision} is not valid: {e}"))
}

impl RegistryClient {
    /// The configuration `name` as a `T`, kept up to date in the background. Fails if it is
    /// missing or does not parse as a `T`. A later value that does not parse is skipped (the
    /// last good one stays, and [`Config::error`] says why).
    pub async fn config<T>(&self, name: &str) -> Result<Config<T>, ClientError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let found = self.range(RangeRequest { key: key(name), ..RangeRequest::default() }).await?;
        let Some(kv) = found.kvs.first() else {
            return Err(ClientError::Registry(RegistryError::new(
                ErrorCode::InvalidRequest,
                format!("no config {name:?}; set it with `rpc config set {name} JSON`"),
            )));
        };
        let value: T = parse(name, kv.mod_revision, &kv.value).map_err(invalid)?;
        let (tx, rx) = watch::channel(Snapshot { value: Arc::new(value), revision: kv.mod_revision, error: None });
        let task = tokio::spawn(follow(self.clone(), name.to_owned(), found.header.revision + 1, tx));
        Ok(Config { rx, task })
    }

    /// Sets configuration `name` to `value` (as JSON); answers the revision written.
    pub async fn set_config<T: Serialize>(&self, name: &str, value: &T) -> Result<u64, ClientError> {
        let json = serde_json::to_vec(value).map_err(|e| invalid(format!("config {name:?} cannot be encoded: {e}")))?;
        Ok(self.put(key(name), json).await?.header.revision)
    }

    /// Every revision of configuration `name` still in the registry's history, oldest first
    /// (deletions have an empty `json`). Fails for a config that does not exist now.
    pub async fn config_history(&self, name: &str) -> Result<Vec<ConfigRevision>, ClientError> {
        let now = self.range(RangeRequest { key: key(name), ..RangeRequest::default() }).await?;
        let Some(last) = now.kvs.first().map(|kv| kv.mod_revision) else {
            return Err(invalid(format!("no config {name:?}")));
        };
        let mut history = Vec::new();
        let mut watch = self.watch(WatchCreate { key: key(name), start_revision: 1, ..WatchCreate::default() });
        while history.last().is_none_or(|r: &ConfigRevision| r.revision < last) {
            let Some(response) = watch.next().await else { break };
            for event in response?.events {
                let json = match event.kind {
                    EventKind::Put => String::from_utf8_lossy(&event.kv.value).into_owned(),
                    EventKind::Delete => String::new(),
                };
                history.push(ConfigRevision { revision: event.kv.mod_revision, json });
            }
        }
        Ok(history)
    }

    /// Sets configuration `name` back to what it was at `revision`; answers the new revision.
    pub async fn rollback_config(&self, name: &str, revision: u64) -> Result<u64, ClientError> {
        let then = self.range(RangeRequest { key: key(name), revision, ..RangeRequest::default() }).await?;
        let Some(kv) = then.kvs.first() else {
            return Err(invalid(format!("config {name:?} did not exist at revision {revision}")));
        };
        Ok(self.put(key(name), kv.value.clone()).await?.header.revision)
    }
}

/// What a [`Config`] holds at one moment.
struct Snapshot<T> {
    value: Arc<T>,
    revision: u64,
    error: Option<String>,
}

/// A configuration value that follows the registry; see [`RegistryClient::config`].
pub struct Config<T> {
    rx: watch::Receiver<Snapshot<T>>,
    task: JoinHandle<()>,
}

impl<T> Config<T> {
    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.rx.borrow().value.clone()
    }

    /// The revision the current value was written at.
    pub fn revision(&self) -> u64 {
        self.rx.borrow().revision
    }

    /// Why the latest value written was refused, if it was (the previous one is kept).
    pub fn error(&self) -> Option<String> {
        self.rx.borrow().error.clone()
    }

    /// Waits for the next change (a new value, or a refused one), and answers the value then.
    pub async fn changed(&mut self) -> Arc<T> {
        // The sender lives in the follower task, which runs until the config is dropped.
        let _ = self.rx.changed().await;
        self.get()
    }
}

impl<T> Drop for Config<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> std::fmt::Debug for Config<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("revision", &self.revision()).finish()
    }
}

async fn follow<T: DeserializeOwned>(client: RegistryClient, name: String, from: u64, tx: watch::Sender<Snapshot<T>>) {
    let mut from = from;
    loop {
        let mut watch = client.watch(WatchCreate { key: key(&name), start_revision: from, ..WatchCreate::default() });
        while let Some(response) = watch.next().await {
            let Ok(response) = response else { break };
            for event in response.events {
                from = event.kv.mod_revision + 1;
                let revision = event.kv.mod_revision;
                let parsed = match event.kind {
                    EventKind::Put => parse::<T>(&name, revision, &event.kv.value),
                    EventKind::Delete => Err(format!("config {name:?} was deleted at revision {revision}")),
                };
                match parsed {
                    Ok(value) => {
                        tx.send_replace(Snapshot { value: Arc::new(value), revision, error: None });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "keeping the last good configuration");
                        tx.send_modify(|snapshot| snapshot.error = Some(error));
                    }
                }
            }
        }
        // Compacted past where we were: start again from the present value.
        let Ok(now) = client.range(RangeRequest { key: key(&name), ..RangeRequest::default() }).await else {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        if let Some(kv) = now.kvs.first().filter(|kv| kv.mod_revision >= from) {
            if let Ok(value) = parse::<T>(&name, kv.mod_revision, &kv.value) {
                tx.send_replace(Snapshot { value: Arc::new(value), revision: kv.mod_revision, error: None });
            }
        }
        from = now.header.revision + 1;
    }
}
