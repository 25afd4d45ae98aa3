//! A session: a lease the client keeps alive in the background, and the moment it is lost.
//! Registrations, locks and elections hang their keys on one, so the keys go when the process
//! does (etcd's `concurrency.Session`).

use crate::{service::ErrorCode, ClientError, RegistryClient};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::{sync::watch, task::JoinHandle, time::Instant};

/// The default time to live of a session's lease, in seconds.
pub const DEFAULT_TTL: u64 = 10;
/// Pause before reopening a keep-alive stream on another member.
const RETRY: Duration = Duration::from_millis(100);
/// How late past its renewal period an answer may be before the member is given up on.
const ANSWER_SLACK: Duration = Duration::from_secs(1);

/// A lease kept alive until the session is closed or dropped, or the registry lets it expire.
#[derive(Debug)]
pub struct Session {
    client: RegistryClient,
    lease: u64,
    ttl: u64,
    lost: watch::Receiver<bool>,
    keep_alive: JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` seconds (raised to the registry's minimum) and starts renewing
    /// it every third of its life.
    pub async fn new(client: &RegistryClient, ttl: u64) -> Result<Session, ClientError> {
        let granted = client.grant(ttl).await?;
        let (lost_tx, lost) = watch::channel(false);
        let keep_alive = tokio::spawn(keep_alive(client.clone(), granted.id, granted.ttl, lost_tx));
        Ok(Session { client: client.clone(), lease: granted.id, ttl: granted.ttl, lost, keep_alive })
    }

    /// The lease's id: put keys with it to tie them to this session.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// The lease's time to live, in seconds, as granted.
    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Whether the lease is gone (expired, revoked, or not renewed in time).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is gone; the keys it held are gone with it.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // The keep-alive task sets the flag before it ends, so a closed channel means lost too.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Ends the session now, deleting the keys it holds.
    pub async fn close(self) -> Result<(), ClientError> {
        self.keep_alive.abort();
        let result = self.client.lease_revoke(self.lease).await;
        match result {
            Err(ClientError::Registry(e)) if e.code == ErrorCode::LeaseNotFound => Ok(()),
            other => other,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.keep_alive.is_finished() {
            return;
        }
        self.keep_alive.abort();
        // Revoke rather than wait out the TTL, so the keys go at once; best effort.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, lease) = (self.client.clone(), self.lease);
            runtime.spawn(async move { client.lease_revoke(lease).await });
        }
    }
}

/// Renews `lease` through the leader until it is gone, then sets `lost`.
async fn keep_alive(client: RegistryClient, lease: u64, ttl: u64, lost: watch::Sender<bool>) {
    let ttl = Duration::from_secs(ttl);
    let period = ttl / 3;
    // Until the first answer, the lease is known to live a TTL from the grant.
    let mut expires = Instant::now() + ttl;
    'streams: while Instant::now() < expires {
        let ticks = futures_util::stream::unfold(true, move |first| async move {
            if !first {
                tokio::time::sleep(period).await;
            }
            Some((lease, false))
        });
        let opened = tokio::time::timeout_at(expires, client.endpoint().lease_keep_alive(ticks.boxed())).await;
        let mut answers = match opened {
            Ok(Ok(answers)) => answers,
            Ok(Err(_)) => {
                client.move_on("");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => break,
        };
        loop {
            // A member that stops answering (paused, cut off) is left for another well before
            // the lease runs out.
            let answer_by = expires.min(Instant::now() + period + ANSWER_SLACK);
            match tokio::time::timeout_at(answer_by, answers.next()).await {
                Ok(Some(Ok(Ok(status)))) if status.remaining_ms > 0 => {
                    // The leader measured this before the answer travelled: count a tenth off.
                    let remaining = Duration::from_millis(status.remaining_ms);
                    expires = Instant::now() + remaining - remaining / 10;
                }
                Ok(Some(Ok(Ok(_)))) => break 'streams,
                Ok(Some(Ok(Err(e)))) if e.code == ErrorCode::LeaseNotFound => break 'streams,
                Ok(Some(Ok(Err(e)))) => {
                    client.move_on(&e.leader);
                    break;
                }
                Ok(_) => {
                    client.move_on("");
                    break;
                }
                Err(_) if Instant::now() >= expires => break 'streams,
                Err(_) => {
                    client.move_on("");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::debug!(lease = format_args!("{lease:x}"), "session lost");
    lost.send_replace(true);
}
