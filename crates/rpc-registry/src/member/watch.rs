//! Watches: the watchers registered with the store, and the task serving one watch stream.
//!
//! A watcher is registered under the store's lock, after its history is read under the same
//! lock, so no revision falls between the history it replays and the live events it gets. Live
//! events go to its stream's bounded queue; a watcher whose queue is full is unregistered and
//! its stream re-creates it from the first revision it missed, replaying from the history, so a
//! slow watcher costs its own catch-up and never loses an event.

use super::Shared;
use crate::{
    api::{in_range, Event, EventKind, Header, WatchCreate, WatchRequest, WatchResponse},
    auth::{Access, PERMISSION_DENIED},
};
use futures_util::StreamExt;
use rpc_core::Streaming;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, Notify};

/// Live responses queued per stream before its slowest watcher is made to catch up.
const LIVE_QUEUE: usize = 1024;
/// Responses queued towards the client.
const OUT_QUEUE: usize = 256;
/// Watches per stream.
const MAX_WATCHES: usize = 1024;
/// How long a member may know no leader before it ends its watch streams: a member cut off
/// from the majority would otherwise hold its watchers silently, and ending the stream sends
/// the client's watch to a member that hears the leader (etcd's clients must ask for this).
const LEADERLESS_LIMIT: Duration = Duration::from_secs(1);

/// The watchers of a member, by stream and watch id.
#[derive(Default)]
pub(super) struct Watchers {
    watchers: HashMap<(u64, u64), Watcher>,
    next_stream: u64,
}

struct Watcher {
    spec: WatchCreate,
    live: mpsc::Sender<WatchResponse>,
    lagged: Arc<Lagged>,
}

/// Watches of one stream that fell behind, with the revision each must resume from.
#[derive(Default)]
struct Lagged {
    watches: Mutex<Vec<(u64, u64)>>,
    notify: Notify,
}

impl Watchers {
    /// Sends each watcher the events of `revision` it selects, in one response.
    pub(super) fn notify(&mut self, header: &Header, revision: u64, events: &[Event]) {
        let mut fell_behind = Vec::new();
        for (&key, watcher) in &self.watchers {
            // A watch resumed on a member that lags behind the one it left must not see again
            // what it has seen.
            if revision < watcher.spec.start_revision {
                continue;
            }
            let selected = select(&watcher.spec, events);
            if selected.is_empty() {
                continue;
            }
            let response = WatchResponse {
                header: header.clone(),
                watch_id: watcher.spec.watch_id,
                events: selected,
                ..WatchResponse::default()
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = watcher.live.try_send(response) {
                fell_behind.push((key, revision));
            }
        }
        for (key, revision) in fell_behind {
            if let Some(watcher) = self.watchers.remove(&key) {
                watcher.lagged.watches.lock().unwrap_or_else(|e| e.into_inner()).push((key.1, revision));
                watcher.lagged.notify.notify_one();
            }
        }
    }

    /// The store was replaced by a snapshot: watchers resume from after what they have seen,
    /// which the new store's history replays or reports as compacted.
    pub(super) fn restored(&mut self, store: &crate::store::Store) {
        let resume = store.compact_revision() + 1;
        for ((_, watch_id), watcher) in self.watchers.drain() {
            watcher.lagged.watches.lock().unwrap_or_else(|e| e.into_inner()).push((watch_id, resume));
            watcher.lagged.notify.notify_one();
        }
    }

    /// Watchers open on this member.
    pub(super) fn len(&self) -> usize {
        self.watchers.len()
    }
}

/// The events of `events` that `spec` selects, trimmed to what it asked for.
fn select(spec: &WatchCreate, events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| in_range(&e.kv.key, &spec.key, &spec.range_end))
        .filter(|e| match e.kind {
            EventKind::Put => !spec.no_put,
            EventKind::Delete => !spec.no_delete,
        })
        .map(|e| Event { prev_kv: if spec.prev_kv { e.prev_kv.clone() } else { None }, ..e.clone() })
        .collect()
}

/// Serves one watch stream until the client closes it; returns the responses to send.
/// Serves one watch stream for `principal` (who opened it, for permission checks).
pub(super) fn serve(
    shared: Arc<Shared>,
    requests: Streaming<WatchRequest>,
    principal: Option<String>,
) -> mpsc::Receiver<WatchResponse> {
    let (out, rx) = mpsc::channel(OUT_QUEUE);
    tokio::spawn(Stream::new(shared, out, principal).run(requests));
    rx
}

struct Stream {
    shared: Arc<Shared>,
    id: u64,
    out: mpsc::Sender<WatchResponse>,
    live_tx: mpsc::Sender<WatchResponse>,
    live: mpsc::Receiver<WatchResponse>,
    lagged: Arc<Lagged>,
    /// The watches of this stream, so they can be removed when it ends.
    specs: HashMap<u64, WatchCreate>,
    /// Who opened the stream.
    principal: Option<String>,
}

impl Stream {
    fn new(shared: Arc<Shared>, out: mpsc::Sender<WatchResponse>, principal: Option<String>) -> Stream {
        let id = {
            let mut state = shared.lock();
            state.watchers.next_stream += 1;
            state.watchers.next_stream
        };
        let (live_tx, live) = mpsc::channel(LIVE_QUEUE);
        Stream { shared, id, out, live_tx, live, lagged: Arc::default(), specs: HashMap::new(), principal }
    }

    async fn run(mut self, mut requests: Streaming<WatchRequest>) {
        let mut progress = tokio::time::interval(self.shared.config.progress_interval);
        progress.tick().await;
        let lagged = self.lagged.clone();
        let mut leader_check = tokio::time::interval(LEADERLESS_LIMIT / 4);
        let mut leaderless_since = None;
        loop {
            let sent = tokio::select! {
                biased;
                Some(response) = self.live.recv() => self.send(response).await,
                request = requests.next() => match request {
                    Some(Ok(request)) => self.request(request).await,
                    // The client closed its side or the stream failed: nothing more to do.
                    _ => break,
                },
                () = lagged.notify.notified() => self.catch_up().await,
                _ = progress.tick() => self.progress(false),
                _ = leader_check.tick() => {
                    let now = Instant::now();
                    match self.shared.lock().raft.leader {
                        0 => now.duration_since(*leaderless_since.get_or_insert(now)) < LEADERLESS_LIMIT,
                        _ => {
                            leaderless_since = None;
                            true
                        }
                    }
                }
            };
            if !sent {
                break;
            }
        }
        let mut state = self.shared.lock();
        for watch_id in self.specs.keys() {
            state.watchers.watchers.remove(&(self.id, *watch_id));
        }
    }

    async fn send(&self, response: WatchResponse) -> bool {
        self.out.send(response).await.is_ok()
    }

    async fn request(&mut self, request: WatchRequest) -> bool {
        match request {
            WatchRequest::Create(spec) => {
                let allowed = match &self.shared.guard {
                    Some(guard) => guard.check_for(self.principal.as_deref(), Access::Read, &spec.key, &spec.range_end),
                    None => Ok(()),
                };
                match allowed {
                    Ok(()) => self.create(spec, true).await,
                    Err(e) => {
                        let reason = format!("{PERMISSION_DENIED}{}", e.message);
                        self.send(self.canceled(spec.watch_id, &reason, 0)).await
                    }
                }
            }
            WatchRequest::Cancel(watch_id) => {
                self.shared.lock().watchers.watchers.remove(&(self.id, watch_id));
                let known = self.specs.remove(&watch_id).is_some();
                let reason = if known { "canceled by the client" } else { "no such watch on this stream" };
                self.send(self.canceled(watch_id, reason, 0)).await
            }
            WatchRequest::Progress(_) => self.progress(true),
        }
    }

    fn canceled(&self, watch_id: u64, reason: &str, compact_revision: u64) -> WatchResponse {
        let header = {
            let state = self.shared.lock();
            self.shared.header(&state)
        };
        WatchResponse {
            header,
            watch_id,
            canceled: true,
            compact_revision,
            cancel_reason: reason.to_owned(),
            ..WatchResponse::default()
        }
    }

    /// Registers a watch, replaying its history from `start_revision` first.
    async fn create(&mut self, spec: WatchCreate, announce: bool) -> bool {
        let watch_id = spec.watch_id;
        if announce && (self.specs.contains_key(&watch_id) || self.specs.len() >= MAX_WATCHES) {
            let reason = match self.specs.contains_key(&watch_id) {
                true => "a watch with this id is already open on this stream; pick another id".to_owned(),
                false => format!("a stream holds at most {MAX_WATCHES} watches; open another stream"),
            };
            return self.send(self.canceled(watch_id, &reason, 0)).await;
        }
        let registered = {
            let mut state = self.shared.lock();
            let header = self.shared.header(&state);
            let history = match spec.start_revision {
                0 => Ok(Vec::new()),
                start => state.store.events_since(&spec.key, &spec.range_end, start),
            };
            match history {
                Ok(events) => {
                    let watcher =
                        Watcher { spec: spec.clone(), live: self.live_tx.clone(), lagged: self.lagged.clone() };
                    state.watchers.watchers.insert((self.id, watch_id), watcher);
                    Ok((header, events))
                }
                Err(_) => Err(state.store.compact_revision()),
            }
        };
        let (header, events) = match registered {
            Ok(found) => found,
            Err(compacted) => {
                self.specs.remove(&watch_id);
                let reason = format!(
                    "revision {} was compacted (up to {compacted}); read the keys afresh and watch from after that read",
                    spec.start_revision
                );
                return self.send(self.canceled(watch_id, &reason, compacted)).await;
            }
        };
        self.specs.insert(watch_id, spec.clone());
        if announce
            && !self.send(WatchResponse { header: header.clone(), watch_id, created: true, ..Default::default() }).await
        {
            return false;
        }
        // One response per revision: a revision's events are never split.
        let selected = select(&spec, &events);
        let mut start = 0;
        while start < selected.len() {
            let revision = selected[start].kv.mod_revision;
            let end = selected[start..]
                .iter()
                .position(|e| e.kv.mod_revision != revision)
                .map_or(selected.len(), |n| start + n);
            let response = WatchResponse {
                header: Header { revision, ..header.clone() },
                watch_id,
                events: selected[start..end].to_vec(),
                ..WatchResponse::default()
            };
            if !self.send(response).await {
                return false;
            }
            start = end;
        }
        true
    }

    /// Re-creates the watches that fell behind, from the first revision each missed.
    async fn catch_up(&mut self) -> bool {
        // What was queued before a watcher fell behind goes first, keeping revisions in order.
        while let Ok(response) = self.live.try_recv() {
            if !self.send(response).await {
                return false;
            }
        }
        let lagged = std::mem::take(&mut *self.lagged.watches.lock().unwrap_or_else(|e| e.into_inner()));
        for (watch_id, resume) in lagged {
            let Some(spec) = self.specs.get(&watch_id).cloned() else { continue };
            if !self.create(WatchCreate { start_revision: resume, ..spec }, false).await {
                return false;
            }
        }
        true
    }

    /// Queues a progress notification behind the events already queued, for the watches that
    /// asked for them (all of them when `all`).
    fn progress(&self, all: bool) -> bool {
        let state = self.shared.lock();
        let header = self.shared.header(&state);
        for (watch_id, spec) in &self.specs {
            // A watch catching up has not seen the current revision yet.
            let live = state.watchers.watchers.contains_key(&(self.id, *watch_id));
            if live && (all || spec.progress_notify) {
                // A full queue already carries news of this stream; the notification can wait.
                let _ = self.live_tx.try_send(WatchResponse {
                    header: header.clone(),
                    watch_id: *watch_id,
                    ..Default::default()
                });
            }
        }
        true
    }
}
