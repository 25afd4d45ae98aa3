//! The calls of one connection that wait for their reply, by request id.
//!
//! Callers insert from any worker thread while the reader task removes, so the table is split
//! into shards by id: consecutive ids land in different shards, and the reader takes each shard's
//! lock once per batch of replies rather than once per reply.
//!
//! The table also keeps each call's deadline, so one timer per connection expires them (see
//! [`PendingCalls::expire`]) instead of a timer registered and cancelled for every call.

use super::Response;
use crate::{id_map::IdMap, Status};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard, OnceLock,
};
use tokio::{
    sync::{oneshot, Notify},
    time::Instant,
};

/// A call's outcome.
pub(crate) type Reply = Result<Response, Status>;
type Waiter = oneshot::Sender<Reply>;

const SHARDS: usize = 8;
/// `next_deadline` when no waiting call has a deadline.
const NO_DEADLINE: u64 = u64::MAX;

fn lock(shard: &Mutex<IdMap<Entry>>) -> MutexGuard<'_, IdMap<Entry>> {
    // Every update is a single insert or remove, so a panic cannot leave a shard torn.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shard that keeps call `id`.
fn shard_of(id: u32) -> usize {
    id as usize % SHARDS
}

struct Entry {
    waiter: Waiter,
    /// Nanoseconds after `PendingCalls::epoch`, or [`NO_DEADLINE`].
    deadline: u64,
}

pub(crate) struct PendingCalls {
    shards: [Mutex<IdMap<Entry>>; SHARDS],
    /// Limit of each shard. Sequential ids spread evenly, so the shards fill together and the
    /// connection's limit holds without a shared counter that every call would contend on.
    max_per_shard: usize,
    max: usize,
    /// Set once the connection is gone, before the table is drained: why, for later callers.
    closed: OnceLock<Status>,
    /// Calls inserted into the table so far.
    inserted: AtomicU64,
    /// Calls removed from the table so far, by reply, cancellation or failure.
    finished: AtomicU64,
    /// Callers the last batch of replies woke. Past one, they are about to send their next
    /// calls together, which should then share a write rather than race to the socket.
    woken: AtomicU64,
    /// Origin of the deadlines kept as integers.
    epoch: Instant,
    /// No waiting call's deadline is earlier than this (nanoseconds after `epoch`).
    next_deadline: AtomicU64,
    /// Signalled when `next_deadline` moves earlier or the table closes.
    deadline_changed: Notify,
}

impl PendingCalls {
    pub(crate) fn new(max: usize) -> Self {
        PendingCalls {
            shards: std::array::from_fn(|_| Mutex::new(IdMap::default())),
            max_per_shard: max.div_ceil(SHARDS).max(1),
            max,
            closed: OnceLock::new(),
            inserted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            woken: AtomicU64::new(0),
            epoch: Instant::now(),
            next_deadline: AtomicU64::new(NO_DEADLINE),
            deadline_changed: Notify::new(),
        }
    }

    fn shard(&self, id: u32) -> MutexGuard<'_, IdMap<Entry>> {
        lock(&self.shards[shard_of(id)])
    }

    /// Registers call `id`, to fail with [`PendingCalls::expire`] once `deadline` passes; fails
    /// if the connection is closed or too many calls wait.
    pub(crate) fn insert(&self, id: u32, waiter: Waiter, deadline: Option<Instant>) -> Result<(), Status> {
        // Saturates far in the future; never equal to NO_DEADLINE, which would hide the call.
        let deadline = deadline.map_or(NO_DEADLINE, |d| {
            u64::try_from(d.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(NO_DEADLINE - 1)
        });
        let mut shard = self.shard(id);
        // Read under the shard lock: `close` sets the flag before draining, so a call either
        // sees it here or is drained by `close`.
        if let Some(status) = self.closed.get() {
            return Err(status.clone());
        }
        if shard.len() >= self.max_per_shard {
            return Err(Status::resource_exhausted(format!(
                "about {} calls already wait for replies on this connection (the channel's max_in_flight); add connections or wait",
                self.max
            ))
            .with_not_started());
        }
        shard.insert(id, Entry { waiter, deadline });
        drop(shard);
        self.inserted.fetch_add(1, Ordering::Relaxed);
        // Inserted before published: `expire` resets `next_deadline` before it scans, so it
        // either sees this call or sees the earlier deadline set here.
        if deadline < self.next_deadline.load(Ordering::Acquire)
            && deadline < self.next_deadline.fetch_min(deadline, Ordering::AcqRel)
        {
            self.deadline_changed.notify_one();
        }
        Ok(())
    }

    /// Removes call `id`, returning its waiter if it was still waiting.
    pub(crate) fn remove(&self, id: u32) -> Option<Waiter> {
        let waiter = self.shard(id).remove(&id).map(|e| e.waiter);
        if waiter.is_some() {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
        waiter
    }

    /// Whether call `id` still waits for its reply.
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.shard(id).contains_key(&id)
    }

    /// When the earliest deadline of a waiting call passes, if any call has one.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.next_deadline.load(Ordering::Acquire) {
            NO_DEADLINE => None,
            at => Some(self.epoch + std::time::Duration::from_nanos(at)),
        }
    }

    /// Resolves when the earliest deadline moves earlier or the table closes. Create it before
    /// reading [`PendingCalls::next_deadline`], so a change in between is not missed.
    pub(crate) fn deadline_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.deadline_changed.notified()
    }

    /// Fails the calls whose deadline is at or before `now` with `status()` and returns their
    /// ids.
    pub(crate) fn expire(&self, now: Instant, status: impl Fn() -> Status) -> Vec<u32> {
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(NO_DEADLINE - 1);
        self.next_deadline.store(NO_DEADLINE, Ordering::Release);
        let mut expired = Vec::new();
        let mut earliest = NO_DEADLINE;
        for shard in &self.shards {
            let mut shard = lock(shard);
            let due: Vec<u32> = shard.iter().filter(|(_, e)| e.deadline <= now).map(|(&id, _)| id).collect();
            expired.extend(due.into_iter().filter_map(|id| shard.remove(&id).map(|e| (id, e))));
            earliest = shard.values().map(|e| e.deadline).fold(earliest, u64::min);
        }
        self.next_deadline.fetch_min(earliest, Ordering::AcqRel);
        self.finished.fetch_add(expired.len() as u64, Ordering::Relaxed);
        expired
            .into_iter()
            .map(|(id, entry)| {
                let _ = entry.waiter.send(Err(status()));
                id
            })
            .collect()
    }

    /// Calls waiting for their reply (sent or about to be).
    pub(crate) fn in_flight(&self) -> u64 {
        // Saturating: another thread may see a call's removal before its insertion.
        self.inserted.load(Ordering::Relaxed).saturating_sub(self.finished.load(Ordering::Relaxed))
    }

    /// Whether a caller with `own` calls in the table is alone on the connection: no other call
    /// waits, and no other caller was just woken by a reply and may be about to send.
    pub(crate) fn alone(&self, own: u64) -> bool {
        self.in_flight() <= own && self.woken.load(Ordering::Relaxed) <= 1
    }

    /// Delivers a batch of replies to their waiters; replies nobody waits for are dropped.
    pub(crate) fn complete(&self, replies: &mut Vec<(u32, Reply)>) {
        // A lock per reply: uncontended, it costs less than grouping the batch by shard.
        let mut delivered = 0;
        for (id, reply) in replies.drain(..) {
            let entry = self.shard(id).remove(&id);
            if let Some(entry) = entry {
                delivered += 1;
                let _ = entry.waiter.send(reply);
            }
        }
        self.finished.fetch_add(delivered, Ordering::Relaxed);
        if delivered > 0 {
            self.woken.store(delivered, Ordering::Relaxed);
        }
    }

    /// Fails every waiting call with `status` and refuses new ones.
    pub(crate) fn close(&self, status: Status) {
        let _ = self.closed.set(status);
        let status = self.closed.get().cloned().unwrap_or_else(|| Status::unavailable("connection closed"));
        for shard in &self.shards {
            let drained = std::mem::take(&mut *lock(shard));
            self.finished.fetch_add(drained.len() as u64, Ordering::Relaxed);
            for (_, entry) in drained {
                let _ = entry.waiter.send(Err(status.clone()));
            }
        }
        self.deadline_changed.notify_one();
    }

    /// Removes the calls sent after `last_id` (in wrapping order) and fails them with `status`.
    pub(crate) fn refuse_after(&self, last_id: u32, status: Status) {
        for shard in &self.shards {
            let refused: Vec<Waiter> = {
                let mut shard = lock(shard);
                let ids: Vec<u32> = shard.keys().copied().filter(|&id| (id.wrapping_sub(last_id) as i32) > 0).collect();
                ids.into_iter().filter_map(|id| shard.remove(&id).map(|e| e.waiter)).collect()
            };
            self.finished.fetch_add(refused.len() as u64, Ordering::Relaxed);
            for waiter in refused {
                let _ = waiter.send(Err(status.clone()));
            }
        }
    }

    /// Why the connection closed, once it has.
    pub(crate) fn closed(&self) -> Option<&Status> {
        self.closed.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;

    fn ok() -> Reply {
        Ok(Response { codec: Codec::Json, body: Default::default(), metadata: Default::default() })
    }

    #[test]
    fn batches_reach_their_own_callers_and_unknown_ids_are_ignored() {
        let table = PendingCalls::new(100);
        let mut receivers = Vec::new();
        for id in 0..20u32 {
            let (tx, rx) = oneshot::channel();
            table.insert(id, tx, None).unwrap();
            receivers.push(rx);
        }
        let mut replies: Vec<(u32, Reply)> =
            (0..20).rev().map(|id| (id, Err(Status::internal(id.to_string())))).collect();
        replies.push((999, ok()));
        table.complete(&mut replies);
        for (id, mut rx) in receivers.into_iter().enumerate() {
            assert_eq!(rx.try_recv().unwrap().unwrap_err().message(), id.to_string());
        }
        assert!(table.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        assert_eq!(table.in_flight(), 0, "every delivered call counts as finished");
    }

    #[test]
    fn a_caller_is_alone_only_when_no_other_caller_was_just_woken() {
        let table = PendingCalls::new(100);
        let call = |id| {
            let (tx, rx) = oneshot::channel();
            table.insert(id, tx, None).unwrap();
            rx
        };
        let (_a, _b) = (call(1), call(2));
        assert!(!table.alone(1), "another call waits");
        table.complete(&mut vec![(1, ok()), (2, ok())]);
        let _c = call(3);
        assert!(!table.alone(1), "the caller of 2 was woken with this one and is about to send too");
        table.complete(&mut vec![(3, ok())]);
        let _d = call(4);
        assert!(table.alone(1), "the last batch woke only this caller and nothing else waits");
    }

    #[test]
    fn close_fails_waiters_and_refuses_newcomers() {
        let table = PendingCalls::new(100);
        let (tx, mut rx) = oneshot::channel();
        table.insert(1, tx, None).unwrap();
        table.close(Status::unavailable("gone"));
        assert_eq!(rx.try_recv().unwrap().unwrap_err().message(), "gone");
        let (tx, _rx) = oneshot::channel();
        assert_eq!(table.insert(2, tx, None).unwrap_err().message(), "gone");
    }

    #[test]
    fn go_away_refuses_only_later_ids_even_across_wrap_around() {
        let table = PendingCalls::new(100);
        let ids = [u32::MAX - 1, u32::MAX, 0, 1];
        let mut receivers = Vec::new();
        for id in ids {
            let (tx, rx) = oneshot::channel();
            table.insert(id, tx, None).unwrap();
            receivers.push(rx);
        }
        table.refuse_after(u32::MAX, Status::unavailable("going away"));
        let refused: Vec<bool> = receivers.iter_mut().map(|rx| rx.try_recv().is_ok()).collect();
        assert_eq!(refused, [false, false, true, true]);
    }

    #[test]
    fn the_limit_counts_waiting_calls() {
        let table = PendingCalls::new(2 * SHARDS);
        let mut receivers = Vec::new();
        for id in 0..2 * SHARDS as u32 {
            let (tx, rx) = oneshot::channel();
            table.insert(id, tx, None).unwrap();
            receivers.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        let next = 2 * SHARDS as u32;
        assert_eq!(table.insert(next, tx, None).unwrap_err().code(), crate::Code::ResourceExhausted);
        table.remove(0);
        let (tx, _rx) = oneshot::channel();
        table.insert(next, tx, None).unwrap();
    }

    #[test]
    fn expiry_fails_only_calls_past_their_deadline_and_tracks_the_next_one() {
        let table = PendingCalls::new(100);
        let t0 = Instant::now();
        let ms = std::time::Duration::from_millis;
        let mut receivers = Vec::new();
        for (id, deadline) in [(1, Some(t0 + ms(30))), (2, None), (3, Some(t0 + ms(10))), (4, Some(t0 + ms(20)))] {
            let (tx, rx) = oneshot::channel();
            table.insert(id, tx, deadline).unwrap();
            receivers.push(rx);
        }
        assert_eq!(table.next_deadline(), Some(t0 + ms(10)));
        let mut expired = table.expire(t0 + ms(20), || Status::deadline_exceeded("late"));
        expired.sort_unstable();
        assert_eq!(expired, [3, 4]);
        assert_eq!(table.next_deadline(), Some(t0 + ms(30)), "the earliest deadline left");
        let outcomes: Vec<bool> = receivers.iter_mut().map(|rx| rx.try_recv().is_ok()).collect();
        assert_eq!(outcomes, [false, false, true, true]);
        assert!(table.remove(1).is_some());
        assert_eq!(table.expire(t0 + ms(40), || Status::deadline_exceeded("late")), Vec::<u32>::new());
        assert_eq!(table.next_deadline(), None, "the call without a deadline never expires");
        assert_eq!(table.in_flight(), 1, "only the call without a deadline is left");
    }
}
