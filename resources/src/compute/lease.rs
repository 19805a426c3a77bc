//! Fenced slot leases, as an executor grants them: a lease has a term and a
//! token that grows with every grant on this executor and survives its
//! restart, so that whatever a job commits can be checked against the
//! current grant and a holder that was cut off cannot act after its lease
//! moved on.
//!
//! The executor stops a job by its own clock, a drift margin before the
//! lease's end as the holder sees it: by the time the holder (the job's
//! home) believes the lease lapsed and places the job elsewhere, the old
//! run has stopped, as long as the two clocks differ by less than the
//! margin.
//!
//! Tokens survive a restart through reservations: the table hands out
//! tokens below a reserved bound, and a grant that reaches the bound
//! reserves the next block and asks the driver to persist the new bound
//! *before* it sends the grant (see [`Grant::persist`]). A restarted
//! executor starts from the persisted bound, above every token it gave.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

/// Tokens reserved at once: one write to disk per this many grants.
pub const TOKEN_BLOCK: u64 = 1024;

/// A lease on a slot, for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The job.
    pub job: Key,
    /// Who holds it (the job's supervisor).
    pub holder: Key,
    /// The fencing token: larger than every token granted before on this
    /// executor.
    pub token: u64,
    /// When it ends as the holder counts (the executor stops the job a
    /// margin earlier).
    pub expires: Instant,
}

/// What a grant gives the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The lease to send to the holder.
    pub lease: Lease,
    /// A new token bound to persist before the lease is sent; `None` when
    /// the bound on disk still covers the token.
    pub persist: Option<u64>,
}

/// Why a lease operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No lease on this job here.
    #[error("no lease on job {0} here")]
    Unknown(Key),
    /// The token is not the current grant's: a holder that was cut off, or
    /// an older placement.
    #[error("token {given} for job {job} is stale (the current grant is {current})")]
    Stale {
        /// The job.
        job: Key,
        /// The token given.
        given: u64,
        /// The current grant's token.
        current: u64,
    },
    /// The lease lapsed by this executor's clock; the job was stopped.
    #[error("the lease on job {0} lapsed")]
    Lapsed(Key),
}

/// The leases an executor has granted, sans-IO.
///
/// Inputs: [`grant`](Self::grant), [`renew`](Self::renew),
/// [`release`](Self::release), [`check`](Self::check) (every commit),
/// with the driver's `now`. Outputs: [`poll_lapsed`](Self::poll_lapsed),
/// the jobs to stop now, and [`poll_timeout`](Self::poll_timeout), when
/// the next one lapses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    term: Duration,
    margin: Duration,
    next_token: u64,
    reserved: u64,
    by_job: BTreeMap<Key, Lease>,
}

impl Leases {
    /// A table whose leases last `term`, stopping jobs `margin` early,
    /// resuming after the token bound `persisted` (0 on a first start).
    pub fn new(term: Duration, margin: Duration, persisted: u64) -> Self {
        Leases {
            term,
            margin: margin.min(term),
            next_token: persisted.saturating_add(1),
            reserved: persisted,
            by_job: BTreeMap::new(),
        }
    }

    /// Grants `holder` a lease on a slot for `job` (a new grant for a job
    /// that had one replaces it: the old token is stale from now on).
    pub fn grant(&mut self, now: Instant, job: Key, holder: Key) -> Grant {
        let token = self.next_token;
        self.next_token = self.next_token.saturating_add(1);
        let persist = (token > self.reserved).then(|| {
            self.reserved = token.saturating_add(TOKEN_BLOCK - 1);
            self.reserved
        });
        let lease = Lease {
            job,
            holder,
            token,
            expires: now + self.term,
        };
        self.by_job.insert(job, lease);
        Grant { lease, persist }
    }

    /// Whether `token` is the current grant for `job` and has not lapsed
    /// by this executor's clock: what every commit of the job is checked
    /// against.
    pub fn check(&self, now: Instant, job: &Key, token: u64) -> Result<&Lease, LeaseError> {
        let lease = self.current(job, token)?;
        if now >= self.stop_at(lease) {
            return Err(LeaseError::Lapsed(*job));
        }
        Ok(lease)
    }

    /// Renews the lease on `job` held with `token` for another term.
    pub fn renew(&mut self, now: Instant, job: &Key, token: u64) -> Result<Lease, LeaseError> {
        self.check(now, job, token)?;
        let term = self.term;
        let lease = self.by_job.get_mut(job).ok_or(LeaseError::Unknown(*job))?;
        lease.expires = now + term;
        Ok(*lease)
    }

    /// Ends the lease on `job` held with `token` (the job finished, or its
    /// holder let go).
    pub fn release(&mut self, job: &Key, token: u64) -> Result<Lease, LeaseError> {
        self.current(job, token)?;
        self.by_job.remove(job).ok_or(LeaseError::Unknown(*job))
    }

    /// The lease on `job` if `token` is its current grant.
    fn current(&self, job: &Key, token: u64) -> Result<&Lease, LeaseError> {
        let lease = self.by_job.get(job).ok_or(LeaseError::Unknown(*job))?;
        if lease.token != token {
            return Err(LeaseError::Stale {
                job: *job,
                given: token,
                current: lease.token,
            });
        }
        Ok(lease)
    }

    /// The next job whose lease has lapsed by this executor's clock (a
    /// margin before its end): the driver stops it. Each is given once.
    pub fn poll_lapsed(&mut self, now: Instant) -> Option<Lease> {
        let job = self
            .by_job
            .values()
            .filter(|l| now >= self.stop_at(l))
            .min_by_key(|l| (l.expires, l.job))?
            .job;
        self.by_job.remove(&job)
    }

    /// When the next lease lapses, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_job.values().map(|l| self.stop_at(l)).min()
    }

    /// Leases held now.
    pub fn len(&self) -> usize {
        self.by_job.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.by_job.is_empty()
    }

    fn stop_at(&self, lease: &Lease) -> Instant {
        lease.expires - self.margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(1);

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn key(n: u8) -> Key {
        Key::of_content(&[n])
    }

    #[test]
    fn every_grant_has_a_larger_token_and_a_new_grant_fences_the_old() {
        let mut leases = Leases::new(TERM, MARGIN, 0);
        let first = leases.grant(t(0), key(1), key(9)).lease;
        let second = leases.grant(t(5), key(2), key(9)).lease;
        assert!(second.token > first.token);
        assert_eq!(first.expires, t(10_000));
        // The job placed again here: the old holder's token is stale.
        let again = leases.grant(t(6), key(1), key(8)).lease;
        assert!(again.token > second.token);
        assert_eq!(
            leases.check(t(7), &key(1), first.token),
            Err(LeaseError::Stale {
                job: key(1),
                given: first.token,
                current: again.token
            })
        );
        assert_eq!(leases.check(t(7), &key(1), again.token), Ok(&again));
        assert_eq!(leases.check(t(7), &key(3), 1), Err(LeaseError::Unknown(key(3))));
        assert!(
            leases.release(&key(1), first.token).is_err(),
            "a stale token releases nothing"
        );
        assert_eq!(leases.release(&key(1), again.token), Ok(again));
        assert_eq!(leases.len(), 1);
    }

    #[test]
    fn a_lease_not_renewed_lapses_a_margin_before_its_end() {
        let mut leases = Leases::new(TERM, MARGIN, 0);
        let lease = leases.grant(t(0), key(1), key(9)).lease;
        assert_eq!(leases.poll_timeout(), Some(t(9_000)));
        assert_eq!(leases.poll_lapsed(t(8_999)), None);
        assert!(leases.check(t(8_999), &key(1), lease.token).is_ok());
        assert_eq!(
            leases.check(t(9_000), &key(1), lease.token),
            Err(LeaseError::Lapsed(key(1)))
        );
        assert_eq!(leases.poll_lapsed(t(9_000)), Some(lease));
        assert_eq!(leases.poll_lapsed(t(9_000)), None, "given once");
        assert!(leases.is_empty());
        assert_eq!(leases.poll_timeout(), None);
    }

    #[test]
    fn a_renewal_extends_the_term_from_now_and_a_lapsed_lease_cannot_be_renewed() {
        let mut leases = Leases::new(TERM, MARGIN, 0);
        let lease = leases.grant(t(0), key(1), key(9)).lease;
        let renewed = leases.renew(t(3_000), &key(1), lease.token).unwrap();
        assert_eq!(renewed.expires, t(13_000));
        assert_eq!(renewed.token, lease.token);
        assert_eq!(leases.poll_lapsed(t(11_999)), None);
        assert_eq!(
            leases.renew(t(12_000), &key(1), lease.token),
            Err(LeaseError::Lapsed(key(1)))
        );
        assert!(leases.renew(t(1), &key(1), lease.token + 1).is_err());
    }

    #[test]
    fn tokens_survive_a_restart_through_the_persisted_bound() {
        let mut leases = Leases::new(TERM, MARGIN, 0);
        let first = leases.grant(t(0), key(1), key(9));
        assert_eq!(first.lease.token, 1);
        assert_eq!(first.persist, Some(TOKEN_BLOCK), "the first grant reserves a block");
        let mut last = first;
        for n in 2..=TOKEN_BLOCK {
            last = leases.grant(t(0), key(1), key(9));
            assert_eq!(last.persist, None, "grant {n} is covered");
        }
        assert_eq!(last.lease.token, TOKEN_BLOCK);
        let next = leases.grant(t(0), key(1), key(9));
        assert_eq!(next.persist, Some(2 * TOKEN_BLOCK));
        // A crash now: the executor restarts from the bound on disk, and
        // every token it grants is above every token it gave.
        let mut restarted = Leases::new(TERM, MARGIN, 2 * TOKEN_BLOCK);
        let after = restarted.grant(t(0), key(1), key(9));
        assert!(after.lease.token > next.lease.token);
        assert_eq!(after.persist, Some(3 * TOKEN_BLOCK));
    }

    #[test]
    fn the_margin_never_exceeds_the_term() {
        let mut leases = Leases::new(TERM, Duration::from_secs(60), 0);
        let lease = leases.grant(t(5_000), key(1), key(9)).lease;
        assert_eq!(leases.poll_timeout(), Some(t(5_000)));
        assert_eq!(leases.poll_lapsed(t(5_000)), Some(lease));
    }
}
