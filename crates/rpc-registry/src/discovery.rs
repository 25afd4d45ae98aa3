//! Service discovery on the registry: instances register under a session's lease, and
//! [`RegistryDiscover`] follows them for rpc-lb's balanced channels and lookaside balancer.
//!
//! An instance is the key `services/{service}/{addr}` with its [`Instance`] as JSON (readable
//! with `rpc kv get --prefix services/` and by tools in any language).

use crate::{
    api::{prefix_end, EventKind, KeyValue, PutRequest, RangeRequest, WatchCreate},
    session::{Session, DEFAULT_TTL},
    ClientError, RegistryClient, Watch,
};
use futures_util::StreamExt;
use rpc_core::{
    server::{Announce, AnnounceFuture, Listening},
    Codec, Status,
};
use rpc_lb::discover::{diff, Change, Discover, Endpoint};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::oneshot, task::JoinHandle};

/// Where instances live in the key space.
pub const SERVICES_PREFIX: &str = "services/";
/// The [`Instance::metadata`] key under which an announced server with an admin port gives
/// its address (`host:port`): where a dashboard scrapes its metrics.
pub const ADMIN_METADATA: &str = "admin";
/// Longest pause between tries to register.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long [`RegistryClient::register`] keeps trying before it gives up.
const FIRST_REGISTRATION: Duration = Duration::from_secs(20);

/// One instance of a service, as registered.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    /// The service's name.
    pub service: String,
    /// `host:port` clients connect to.
    pub addr: String,
    /// Relative share of traffic for weighted balancers.
    pub weight: u32,
    /// Failure domain (zone, rack); empty if unknown.
    pub zone: String,
    /// The build it runs.
    pub version: String,
    /// Labels such as `canary`.
    pub tags: Vec<String>,
    /// Anything else.
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance of `service` at `addr`, weight 1.
    pub fn new(service: impl Into<String>, addr: impl ToString) -> Instance {
        Instance { service: service.into(), addr: addr.to_string(), weight: 1, ..Instance::default() }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Instance {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Instance {
        self.zone = zone.into();
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Instance {
        self.version = version.into();
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Instance {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Instance {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The instance's key.
    pub fn key(&self) -> String {
        format!("{SERVICES_PREFIX}{}/{}", self.service, self.addr)
    }

    /// What a balancer knows of it: weight and zone, with version and tags in the metadata.
    pub fn endpoint(&self) -> Endpoint {
        let mut endpoint = Endpoint::new(&self.addr).weight(self.weight);
        endpoint.zone = (!self.zone.is_empty()).then(|| self.zone.clone());
        endpoint.metadata = self.metadata.clone();
        if !self.version.is_empty() {
            endpoint.metadata.insert("version".into(), self.version.clone());
        }
        if !self.tags.is_empty() {
            endpoint.metadata.insert("tags".into(), self.tags.join(","));
        }
        endpoint
    }

    /// Reads an instance from its stored value; fields it leaves out take their defaults, so
    /// tools in other languages may write only `service` and `addr`.
    pub fn decode(kv: &KeyValue) -> Result<Instance, String> {
        let error =
            |e: serde_json::Error| format!("{} does not hold an instance: {e}", String::from_utf8_lossy(&kv.key));
        let given: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&kv.value).map_err(error)?;
        let mut fields = match serde_json::to_value(Instance { weight: 1, ..Instance::default() }) {
            Ok(serde_json::Value::Object(defaults)) => defaults,
            _ => serde_json::Map::new(),
        };
        fields.extend(given);
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(error)
    }

    fn check(&self) -> Result<(), ClientError> {
        let bad = |why: &str| {
            Err(ClientError::Registry(crate::RegistryError::new(
                crate::ErrorCode::InvalidRequest,
                format!("cannot register {:?} at {:?}: {why}", self.service, self.addr),
            )))
        };
        if self.service.is_empty() || self.service.contains('/') {
            return bad("the service name must be non-empty and have no '/'");
        }
        if self.addr.is_empty() {
            return bad("the address is empty");
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = bytes::BytesMut::new();
        // JSON encoding of a plain struct of strings and numbers cannot fail.
        Codec::Json.encode(self, &mut bytes).expect("an instance encodes as JSON");
        bytes.to_vec()
    }
}

impl RegistryClient {
    /// Registers `instance` under a lease of [`DEFAULT_TTL`] seconds kept alive in the
    /// background, and keeps it registered: if the registry loses it (the lease expired while
    /// the process was cut off), it is registered again. Returns once the first registration
    /// is written. Call [`Registration::deregister`] before shutting the server down, so clients
    /// stop choosing it before it stops taking calls, or build the server with
    /// [`RegistryClient::announce`], which does both.
    pub async fn register(&self, instance: Instance) -> Result<Registration, ClientError> {
        self.register_with_ttl(instance, DEFAULT_TTL).await
    }

    /// [`RegistryClient::register`] with a lease of `ttl` seconds: how long a dead instance stays
    /// listed.
    pub async fn register_with_ttl(&self, instance: Instance, ttl: u64) -> Result<Registration, ClientError> {
        instance.check()?;
        // Writing an instance again is harmless (same key, same value; a lease left over from
        // a failed try expires), so failures the registry may recover from are retried: a
        // server starting during an election still registers.
        let deadline = tokio::time::Instant::now() + FIRST_REGISTRATION;
        let mut backoff = Duration::from_millis(50);
        let session = loop {
            match put_instance(self, &instance, ttl).await {
                Ok(session) => break session,
                Err(ClientError::Registry(e)) if e.code == crate::ErrorCode::InvalidRequest => {
                    return Err(ClientError::Registry(e))
                }
                Err(e) if tokio::time::Instant::now() + backoff >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "registering failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(stay_registered(self.clone(), instance.clone(), ttl, session, stopped));
        Ok(Registration { instance, stop: Some(stop), task })
    }

    /// Follows the instances of `service` (see [`RegistryDiscover`]).
    pub fn discover(&self, service: &str) -> RegistryDiscover {
        RegistryDiscover::new(self.clone(), service)
    }

    /// Every registered instance, of one service or of all, ordered by service and address.
    pub async fn instances(&self, service: Option<&str>) -> Result<Vec<Instance>, ClientError> {
        let prefix = match service {
            Some(service) => format!("{SERVICES_PREFIX}{service}/"),
            None => SERVICES_PREFIX.to_owned(),
        };
        let prefix = prefix.into_bytes();
        let range = RangeRequest { range_end: prefix_end(&prefix), key: prefix, ..RangeRequest::default() };
        let found = self.range(range).await?;
        Ok(found.kvs.iter().filter_map(|kv| Instance::decode(kv).ok()).collect())
    }
}

async fn put_instance(client: &RegistryClient, instance: &Instance, ttl: u64) -> Result<Session, ClientError> {
    let session = Session::new(client, ttl).await?;
    let put = PutRequest {
        key: instance.key().into_bytes(),
        value: instance.encode(),
        lease: session.lease(),
        ..PutRequest::default()
    };
    client.put_with(put).await?;
    Ok(session)
}

/// Re-registers whenever the session is lost, until told to stop; then deregisters.
async fn stay_registered(
    client: RegistryClient,
    instance: Instance,
    ttl: u64,
    mut session: Session,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = session.lost() => {}
        }
        tracing::warn!(service = %instance.service, addr = %instance.addr, "the registry lost this instance; registering it again");
        loop {
            let again = tokio::select! {
                _ = &mut stop => return,
                again = put_instance(&client, &instance, ttl) => again,
            };
            match again {
                Ok(renewed) => {
                    session = renewed;
                    backoff = Duration::from_millis(100);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering again failed; retrying");
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    // Revoking the lease deletes the key in the same revision.
    if let Err(e) = session.close().await {
        tracing::warn!(error = %e, service = %instance.service, "deregistering failed; the instance expires with its lease");
    }
}

impl RegistryClient {
    /// Registers a server with the registry when it starts and deregisters it before it
    /// drains: `Server::builder().announce(registry.announce(Instance::new("orders", "")))`.
    /// An empty address is filled in with the one the server listens on.
    pub fn announce(&self, instance: Instance) -> Announcer {
        Announcer { client: self.clone(), instance, ttl: DEFAULT_TTL, registration: Arc::new(Mutex::new(None)) }
    }
}

/// Registers a server while it runs; see [`RegistryClient::announce`].
#[derive(Debug)]
pub struct Announcer {
    client: RegistryClient,
    instance: Instance,
    ttl: u64,
    registration: Arc<Mutex<Option<Registration>>>,
}

impl Announcer {
    /// Registers under a lease of `ttl` seconds (default [`DEFAULT_TTL`]): how long the
    /// instance stays listed after its process dies without deregistering.
    pub fn ttl(mut self, ttl: u64) -> Announcer {
        self.ttl = ttl;
        self
    }
}

impl Announce for Announcer {
    fn up(&self, listening: Listening) -> AnnounceFuture<std::io::Result<()>> {
        let (client, registration, ttl) = (self.client.clone(), self.registration.clone(), self.ttl);
        let mut instance = self.instance.clone();
        let addr = listening.addr;
        if let Some(admin) = listening.admin {
            // Where dashboards and scrapers find its metrics.
            instance.metadata.entry(ADMIN_METADATA.to_owned()).or_insert_with(|| admin.to_string());
        }
        Box::pin(async move {
            if instance.addr.is_empty() {
                if addr.ip().is_unspecified() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the server listens on {addr}, which clients cannot dial; give the Instance the address they should use"),
                    ));
                }
                instance.addr = addr.to_string();
            }
            let registered = client.register_with_ttl(instance, ttl).await.map_err(std::io::Error::other)?;
            *registration.lock().unwrap_or_else(|e| e.into_inner()) = Some(registered);
            Ok(())
        })
    }

    fn down(&self) -> AnnounceFuture<()> {
        let registered = self.registration.lock().unwrap_or_else(|e| e.into_inner()).take();
        Box::pin(async move {
            if let Some(registered) = registered {
                registered.deregister().await;
            }
        })
    }
}

/// An instance kept registered in the background; see [`RegistryClient::register`]. Dropping it
/// deregisters too, without waiting.
#[must_use = "dropping a Registration deregisters the instance"]
#[derive(Debug)]
pub struct Registration {
    instance: Instance,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Registration {
    /// What is registered.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Removes the instance from the registry and waits until it is gone (or the registry
    /// could not be told: then the instance expires with its lease).
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The task sees the stop and deregisters on its own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The instances of one service, followed through a watch: an rpc-lb [`Discover`].
///
/// The first call lists them (answering an error while the registry cannot be reached, so the
/// balanced channel retries); later calls wait for changes on a watch that moves between
/// members and resumes from the last revision seen, while the channel keeps the instances it
/// knows. If that history was compacted, the call answers an error and the next lists again.
/// Instances whose value is not an [`Instance`] are skipped with a warning.
pub struct RegistryDiscover {
    client: RegistryClient,
    prefix: Vec<u8>,
    /// What the balancer was last told, by address.
    known: BTreeMap<String, Endpoint>,
    watch: Option<Watch>,
    /// The revision the known set is current at.
    revision: u64,
}

impl std::fmt::Debug for RegistryDiscover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDiscover")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("known", &self.known.len())
            .field("revision", &self.revision)
            .finish()
    }
}

impl RegistryDiscover {
    fn new(client: RegistryClient, service: &str) -> RegistryDiscover {
        let prefix = format!("{SERVICES_PREFIX}{service}/").into_bytes();
        RegistryDiscover { client, prefix, known: BTreeMap::new(), watch: None, revision: 0 }
    }

    /// Lists the instances and answers how the known set changes to match.
    async fn list(&mut self) -> Result<Vec<Change>, ClientError> {
        let range =
            RangeRequest { key: self.prefix.clone(), range_end: prefix_end(&self.prefix), ..RangeRequest::default() };
        let found = self.client.range(range).await?;
        let mut now = BTreeMap::new();
        for kv in &found.kvs {
            match Instance::decode(kv) {
                Ok(instance) => {
                    now.insert(instance.addr.clone(), instance.endpoint());
                }
                Err(e) => tracing::warn!(error = %e, "skipping a malformed instance"),
            }
        }
        let changes = diff(&self.known, &now);
        self.known = now;
        self.revision = found.header.revision;
        Ok(changes)
    }

    fn start_watch(&mut self) {
        let spec = WatchCreate {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            start_revision: self.revision + 1,
            ..WatchCreate::default()
        };
        self.watch = Some(self.client.watch(spec));
    }
}

impl Discover for RegistryDiscover {
    async fn next_changes(&mut self) -> Result<Vec<Change>, Status> {
        let first = self.revision == 0;
        if self.watch.is_none() {
            let changes = self.list().await.map_err(|e| Status::unavailable(format!("listing instances: {e}")))?;
            self.start_watch();
            if first || !changes.is_empty() {
                return Ok(changes);
            }
        }
        loop {
            let watch = self.watch.as_mut().expect("a watch was started above");
            let response = match watch.next().await {
                Some(Ok(response)) => response,
                Some(Err(e)) => {
                    // The history it needed was compacted: list again on the next call.
                    self.watch = None;
                    return Err(Status::unavailable(format!("watching instances: {e}")));
                }
                None => {
                    self.watch = None;
                    return Err(Status::unavailable("the instance watch ended"));
                }
            };
            self.revision = self.revision.max(response.header.revision);
            let mut next = self.known.clone();
            for event in response.events {
                self.revision = self.revision.max(event.kv.mod_revision);
                match event.kind {
                    EventKind::Put => match Instance::decode(&event.kv) {
                        Ok(instance) => {
                            next.insert(instance.addr.clone(), instance.endpoint());
                        }
                        Err(e) => tracing::warn!(error = %e, "skipping a malformed instance"),
                    },
                    // An instance's key ends with its address (see `Instance::key`).
                    EventKind::Delete => {
                        let addr = event.kv.key.get(self.prefix.len()..).unwrap_or_default();
                        next.remove(String::from_utf8_lossy(addr).as_ref());
                    }
                }
            }
            let changes = diff(&self.known, &next);
            self.known = next;
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_reads_back_from_its_json_and_missing_fields_take_defaults() {
        let instance = Instance::new("orders", "10.0.0.1:7001").zone("a").tag("canary").metadata("k", "v");
        let kv =
            |value: &[u8]| KeyValue { key: instance.key().into_bytes(), value: value.to_vec(), ..KeyValue::default() };
        assert_eq!(Instance::decode(&kv(&instance.encode())), Ok(instance.clone()));
        let minimal = Instance::decode(&kv(br#"{"service":"orders","addr":"10.0.0.1:7001","weight":1}"#)).unwrap();
        assert_eq!(minimal, Instance::new("orders", "10.0.0.1:7001"));
        let error = Instance::decode(&kv(b"{")).unwrap_err();
        assert!(error.starts_with("services/orders/10.0.0.1:7001 does not hold an instance"), "{error}");
    }
}
