//! A service that exercises every feature of the core, shared by the integration tests.

#![allow(dead_code)]

pub mod messages;

use rpc_core::{Context, Server};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;

#[rpc_core::message]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: u64,
    pub name: String,
    pub data: Vec<u8>,
}

#[rpc_core::message]
#[derive(Debug, Clone, PartialEq)]
pub struct NotFound {
    pub id: u64,
}

/// A service for tests.
#[rpc_core::service]
pub trait Lab {
    /// Returns its argument.
    async fn echo(&self, item: Item) -> Item;
    /// Finds item `id` (only even ids exist).
    async fn get(&self, id: u64) -> Result<Item, NotFound>;
    /// Reports `started:id`, sleeps, then returns `id`.
    async fn sleep_then(&self, id: u64, millis: u64) -> u64;
    /// Never returns; reports `hanging:tag` when it starts and `tag` as cancelled when dropped.
    async fn hang(&self, tag: String);
    /// Panics.
    async fn explode(&self) -> u64;
    /// Returns the request metadata and sets `served-by` on the reply.
    async fn whoami(&self) -> Vec<(String, String)>;
    /// Records `note`.
    #[oneway]
    async fn notify(&self, note: String);
    /// Returns the remaining time of the caller's deadline, in milliseconds.
    #[idempotent]
    async fn remaining_ms(&self) -> Option<u64>;
    /// Calls `hang` on the server at `addr`, propagating this call's deadline and cancellation.
    async fn relay_hang(&self, addr: String, tag: String) -> String;
    /// Calls `whoami` on the server at `addr` and returns what that server saw.
    async fn relay_whoami(&self, addr: String) -> Vec<(String, String)>;
    /// Asks the server at `addr` how long its handler has left (`remaining_ms` there).
    async fn relay_remaining_ms(&self, addr: String) -> Option<u64>;
    /// The port the caller's connection comes from, as this server sees it.
    async fn peer_port(&self) -> u16;
    /// Returns `n` bytes.
    async fn blob(&self, n: u32) -> Vec<u8>;
    /// `n` bytes, a millisecond later: the reply comes from a task of its own.
    async fn blob_later(&self, n: u32) -> Vec<u8>;
    /// Takes no arguments and returns nothing.
    async fn nothing(&self);
    /// Sets reply metadata `tag` to `len` bytes.
    async fn tag_reply(&self, len: u32);
}

#[derive(Default)]
pub struct Events {
    pub cancelled: Mutex<Vec<String>>,
    pub notes: Mutex<Vec<String>>,
    pub finished: Mutex<Vec<u64>>,
    signal: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl Events {
    fn emit(&self, what: String) {
        if let Some(tx) = &*self.signal.lock().unwrap() {
            let _ = tx.send(what);
        }
    }

    /// A receiver of every cancellation (`cancelled:TAG`) and note (`note:TEXT`).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.signal.lock().unwrap() = Some(tx);
        rx
    }
}

#[derive(Clone, Default)]
pub struct LabImpl {
    pub events: Arc<Events>,
    /// One client per relayed-to address, kept across calls: a relay's connection outlives the
    /// call that made it, so only the call's own cancellation can reach the server behind.
    relays: Arc<Mutex<HashMap<String, LabClient>>>,
}

impl LabImpl {
    fn relay(&self, addr: String) -> LabClient {
        let mut relays = self.relays.lock().unwrap();
        relays
            .entry(addr.clone())
            .or_insert_with(|| LabClient::new(rpc_core::Channel::builder(addr).connect_lazy()))
            .clone()
    }
}

struct CancelGuard {
    tag: String,
    events: Arc<Events>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.events.cancelled.lock().unwrap().push(self.tag.clone());
        self.events.emit(format!("cancelled:{}", self.tag));
    }
}

impl Lab for LabImpl {
    async fn echo(&self, item: Item) -> Item {
        item
    }

    async fn get(&self, id: u64) -> Result<Item, NotFound> {
        if id % 2 == 0 {
            Ok(Item { id, name: format!("item-{id}"), data: vec![id as u8; 4] })
        } else {
            Err(NotFound { id })
        }
    }

    async fn sleep_then(&self, id: u64, millis: u64) -> u64 {
        self.events.emit(format!("started:{id}"));
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.events.finished.lock().unwrap().push(id);
        id
    }

    async fn hang(&self, tag: String) {
        self.events.emit(format!("hanging:{tag}"));
        let _guard = CancelGuard { tag, events: self.events.clone() };
        std::future::pending::<()>().await;
    }

    async fn explode(&self) -> u64 {
        panic!("the handler blew up on purpose");
    }

    async fn tag_reply(&self, len: u32) {
        let ctx = Context::current().expect("handlers run inside a context");
        ctx.set_reply_metadata("tag", "x".repeat(len as usize));
    }

    async fn whoami(&self) -> Vec<(String, String)> {
        let ctx = Context::current().expect("handlers run inside a context");
        ctx.set_reply_metadata("served-by", "lab");
        ctx.metadata().iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    async fn notify(&self, note: String) {
        self.events.notes.lock().unwrap().push(note.clone());
        self.events.emit(format!("note:{note}"));
    }

    async fn remaining_ms(&self) -> Option<u64> {
        Context::current().and_then(|c| c.remaining()).map(|d| d.as_millis() as u64)
    }

    async fn relay_hang(&self, addr: String, tag: String) -> String {
        match self.relay(addr).hang(tag).await {
            Ok(()) => "returned".into(),
            Err(status) => status.code().to_string(),
        }
    }

    async fn relay_whoami(&self, addr: String) -> Vec<(String, String)> {
        let channel = rpc_core::Channel::builder(addr).caller("lab-relay").connect_lazy();
        LabClient::new(channel).whoami().await.unwrap_or_default()
    }

    async fn relay_remaining_ms(&self, addr: String) -> Option<u64> {
        self.relay(addr).remaining_ms().await.unwrap()
    }

    async fn peer_port(&self) -> u16 {
        Context::current().and_then(|c| c.peer()).map_or(0, |peer| peer.port())
    }

    async fn blob(&self, n: u32) -> Vec<u8> {
        vec![7; n as usize]
    }

    async fn blob_later(&self, n: u32) -> Vec<u8> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        vec![7; n as usize]
    }

    async fn nothing(&self) {}
}

/// Starts a server with `LabImpl` on a free port.
pub async fn start_lab() -> (rpc_core::server::RunningServer, LabImpl) {
    start_lab_with(|builder| builder).await
}

/// Starts a server with `LabImpl` on a free port, its builder set up by `configure`.
pub async fn start_lab_with(
    configure: impl FnOnce(rpc_core::server::ServerBuilder) -> rpc_core::server::ServerBuilder,
) -> (rpc_core::server::RunningServer, LabImpl) {
    let lab = LabImpl::default();
    let builder = configure(Server::builder().add_service(LabServer::new(lab.clone())));
    (builder.start("127.0.0.1:0").await.unwrap(), lab)
}

/// A client of `server` with `codec`.
pub async fn lab_client(server: &rpc_core::server::RunningServer, codec: rpc_core::Codec) -> LabClient {
    let channel = rpc_core::Channel::builder(server.local_addr().to_string()).codec(codec).connect().await.unwrap();
    LabClient::new(channel)
}

/// Waits for `what` on `rx`, failing the test after a few seconds.
pub async fn expect_event(rx: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) if event == what => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("no {what} within 5 s"),
        }
    }
}

/// Repeats `call` until it fails, and returns the failure; panics with `what` after 10 s.
pub async fn until_refused<T, Fut>(what: &str, call: impl FnMut() -> Fut) -> rpc_core::Status
where
    Fut: std::future::IntoFuture<Output = Result<T, rpc_core::Status>>,
{
    until(what, call, Result::err).await
}

/// Repeats `call` until it succeeds, and returns its value; panics with `what` after 10 s.
pub async fn until_served<T, Fut>(what: &str, call: impl FnMut() -> Fut) -> T
where
    Fut: std::future::IntoFuture<Output = Result<T, rpc_core::Status>>,
{
    until(what, call, Result::ok).await
}

async fn until<R, X, Fut>(what: &str, mut call: impl FnMut() -> Fut, pick: impl Fn(R) -> Option<X>) -> X
where
    Fut: std::future::IntoFuture<Output = R>,
{
    let picked = async {
        loop {
            if let Some(x) = pick(call().await) {
                return x;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), picked).await.unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

/// Waits until the unlabelled series `name` in `metrics` satisfies `ok`.
pub async fn wait_for_series(metrics: &rpc_core::metrics::Metrics, name: &str, ok: impl Fn(f64) -> bool) {
    let read = || {
        let text = metrics.render();
        let line = text.lines().find(|line| line.split(' ').next() == Some(name)).map(str::to_owned);
        line.and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !read().is_some_and(&ok) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never reached the expected value; last {:?}", read()));
}
