//! Renewing the leases a submitter holds, in batches: one task per
//! executor renews every lease held there with one request each third of
//! the term (at most [`PER_REQUEST`] leases a request), instead of one
//! request per job — a submitter with 10,000 jobs queued on a peer sends a
//! few requests a second, not thousands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use shoal_overlay::Key;
use tokio::sync::oneshot;

use super::protocol::{Answer, Request};
use crate::client::WeakClient;

/// Leases renewed per request, at most (a request stays well inside its
/// frame cap).
pub(super) const PER_REQUEST: usize = 1000;

/// How long a renewal request may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The leases held on one executor: job → (token, where to say it is lost).
#[derive(Default)]
pub(crate) struct Renewer {
    held: Mutex<HashMap<Key, (u64, oneshot::Sender<String>)>>,
    running: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Renewer {
    /// Holds the lease on `job` (`token`) on `peer`, renewing it every
    /// third of `term` until [`drop_lease`](Self::drop_lease); the receiver
    /// hears why, if the lease is lost.
    pub(crate) fn hold(
        self: &Arc<Self>,
        node: WeakClient,
        peer: PeerId,
        term: Duration,
        job: Key,
        token: u64,
    ) -> oneshot::Receiver<String> {
        let (lost, hear) = oneshot::channel();
        lock(&self.held).insert(job, (token, lost));
        let mut running = lock(&self.running);
        if !*running {
            *running = true;
            tokio::spawn(self.clone().run(node, peer, term));
        }
        hear
    }

    /// Stops renewing the lease on `job`.
    pub(crate) fn drop_lease(&self, job: &Key) {
        lock(&self.held).remove(job);
    }

    async fn run(self: Arc<Self>, node: WeakClient, peer: PeerId, term: Duration) {
        let every = (term / 3).max(Duration::from_millis(10));
        let mut last_answer = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let leases: Vec<(Key, u64)> = lock(&self.held).iter().map(|(k, (t, _))| (*k, *t)).collect();
            let client = match node.upgrade() {
                Some(client) if !leases.is_empty() => client,
                _ => {
                    // Nothing held (or the node stopped): the next hold starts anew.
                    let mut running = lock(&self.running);
                    if lock(&self.held).is_empty() || node.upgrade().is_none() {
                        *running = false;
                        return;
                    }
                    continue;
                }
            };
            let mut answered = true;
            for batch in leases.chunks(PER_REQUEST) {
                let request = Request::RenewMany(batch.to_vec());
                match super::submit::ask(&client, peer, &request, ASK_TIMEOUT).await {
                    Ok(Answer::RenewedMany { refused, .. }) => {
                        let mut held = lock(&self.held);
                        for (job, why) in refused {
                            if let Some((_, lost)) = held.remove(&job) {
                                let _ = lost.send(why);
                            }
                        }
                    }
                    _ => answered = false,
                }
            }
            if answered {
                last_answer = tokio::time::Instant::now();
            } else if last_answer.elapsed() > term {
                let why = format!(
                    "the executor {peer} was unreachable for a whole lease term ({term:?}); it has stopped the job"
                );
                for (_, (_, lost)) in lock(&self.held).drain() {
                    let _ = lost.send(why.clone());
                }
            }
        }
    }
}
