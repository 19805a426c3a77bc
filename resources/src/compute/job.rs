//! Jobs: a job's spec, its key, and the record its home keeps.
//!
//! A job's key is BLAKE3 of its canonical spec, its submitter and a nonce,
//! so the record lives at a home no one picks, and `status` works from any
//! peer. The record is fenced: it names the current placement (executor
//! and lease token), and a state change, an output or a checkpoint is
//! accepted only from that placement — a cut-off executor whose job was
//! placed elsewhere cannot commit. A result is committed once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

use super::offer::{JobKind, Needs};

/// The first bytes of a job record's value.
const MAGIC: &[u8; 13] = b"shoal-job-v1\n";
/// Largest job record body after its magic.
pub const MAX_JOB_RECORD_BYTES: usize = 16 * 1024;

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// WebAssembly or native.
    pub kind: Option<JobKind>,
    /// The module's blob id (WebAssembly).
    pub module: Option<Key>,
    /// The command and its arguments (native), or the module's arguments.
    pub args: Vec<String>,
    /// Environment variables given to the job (and nothing else).
    pub env: BTreeMap<String, String>,
    /// Inputs: a blob id and the name it appears under in `/in`.
    pub inputs: Vec<(Key, String)>,
    /// Memory, bytes.
    pub memory: u64,
    /// Time limit, milliseconds.
    pub timeout_ms: u64,
    /// Labels the slot must carry (`--where`).
    pub labels: BTreeMap<String, String>,
    /// Copies of the job's output its home keeps (`--replicas`): the
    /// executor pins the output before it commits the result, so the
    /// output outlives the executor. 0: none; the executor alone provides
    /// it. (Left out of the canonical bytes when 0, so the keys of jobs
    /// that do not ask stay what they were.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

impl JobSpec {
    /// The spec's canonical bytes: CBOR of a struct whose maps are ordered,
    /// so equal specs give equal bytes.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// What the job needs of a slot (a spec naming no kind is WebAssembly).
    pub fn needs(&self) -> Needs {
        Needs {
            kind: Some(self.kind.unwrap_or(JobKind::Wasm)),
            memory: self.memory,
            labels: self.labels.clone(),
        }
    }

    /// The job's key: BLAKE3 of the canonical spec, the submitter and a
    /// nonce (two submissions of one spec are two jobs).
    pub fn key(&self, submitter: &Key, nonce: u64) -> Key {
        let mut hasher = blake3::Hasher::new_derive_key("shoal job v1");
        let spec = self.canonical();
        hasher.update(&(spec.len() as u64).to_be_bytes());
        hasher.update(&spec);
        hasher.update(&submitter.to_bytes());
        hasher.update(&nonce.to_be_bytes());
        Key::from_bytes(*hasher.finalize().as_bytes())
    }
}

/// One placement of a job: the executor and the lease token it granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The executor.
    pub peer: Key,
    /// The token of its lease (tokens are per executor: a placement is
    /// named by both).
    pub token: u64,
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Submitted, not placed yet.
    Queued,
    /// Placed on an executor (running or waiting in its queue).
    Placed(Placed),
    /// Running on the executor.
    Running(Placed),
    /// Ended with an exit code; `output` is the id of its `/out`.
    Ended {
        /// The placement that ran it.
        by: Placed,
        /// The exit code.
        exit_code: i32,
        /// The id of the output directory, if it wrote one.
        output: Option<Key>,
    },
    /// Cancelled before it ended.
    Cancelled,
}

/// The record a job's home keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The submitter.
    pub submitter: Key,
    /// Where it stands.
    pub state: JobState,
    /// When it was submitted, placed, started and ended (the home's clock).
    pub queued_at: Instant,
    /// When it was last placed.
    pub placed_at: Option<Instant>,
    /// When it started.
    pub started_at: Option<Instant>,
    /// When it ended.
    pub ended_at: Option<Instant>,
    /// The executor's network identity (a libp2p peer id's bytes): whom to
    /// ask for the job's output. Set with the placement.
    #[serde(default, with = "serde_bytes_opt")]
    pub executor: Option<Vec<u8>>,
    /// Why the job failed, if it did not exit on its own.
    #[serde(default)]
    pub error: Option<String>,
}

/// `Option<Vec<u8>>` as CBOR bytes.
mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(serde_bytes::Bytes::new(bytes)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

/// Why a change to a job record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The change comes from a placement that is not the current one.
    #[error("a stale placement (token {given} on {peer}) cannot change the job")]
    Stale {
        /// The executor that sent it.
        peer: Key,
        /// Its token.
        given: u64,
    },
    /// The job ended or was cancelled already: its result stands.
    #[error("the job has ended already")]
    Ended,
    /// The change does not follow from the job's state (a start before a
    /// placement).
    #[error("the job is not in a state that allows this")]
    Order,
}

impl JobRecord {
    /// A job submitted by `submitter` at `now`.
    pub fn new(submitter: Key, now: Instant) -> Self {
        JobRecord {
            submitter,
            state: JobState::Queued,
            queued_at: now,
            placed_at: None,
            started_at: None,
            ended_at: None,
            executor: None,
            error: None,
        }
    }

    /// The current placement, if any.
    pub fn placement(&self) -> Option<Placed> {
        match self.state {
            JobState::Placed(p) | JobState::Running(p) => Some(p),
            _ => None,
        }
    }

    fn current(&self, by: Placed) -> Result<(), JobError> {
        match self.state {
            JobState::Ended { .. } | JobState::Cancelled => Err(JobError::Ended),
            _ if self.placement() == Some(by) => Ok(()),
            _ => Err(JobError::Stale {
                peer: by.peer,
                given: by.token,
            }),
        }
    }

    /// The job is placed (again) with `by`: from now on only `by` may
    /// change it. Placing a job that ended is refused.
    pub fn place(&mut self, now: Instant, by: Placed) -> Result<(), JobError> {
        if matches!(self.state, JobState::Ended { .. } | JobState::Cancelled) {
            return Err(JobError::Ended);
        }
        self.state = JobState::Placed(by);
        self.placed_at = Some(now);
        Ok(())
    }

    /// The placement `by` started the job.
    pub fn start(&mut self, now: Instant, by: Placed) -> Result<(), JobError> {
        self.current(by)?;
        if !matches!(self.state, JobState::Placed(_)) {
            return Err(JobError::Order);
        }
        self.state = JobState::Running(by);
        self.started_at = Some(now);
        Ok(())
    }

    /// The placement `by` ended the job: committed once.
    pub fn end(&mut self, now: Instant, by: Placed, exit_code: i32, output: Option<Key>) -> Result<(), JobError> {
        self.current(by)?;
        if !matches!(self.state, JobState::Running(_)) {
            return Err(JobError::Order);
        }
        self.state = JobState::Ended { by, exit_code, output };
        self.ended_at = Some(now);
        Ok(())
    }

    /// The job is cancelled, unless it ended already.
    pub fn cancel(&mut self, now: Instant) -> Result<(), JobError> {
        if matches!(self.state, JobState::Ended { .. } | JobState::Cancelled) {
            return Err(JobError::Ended);
        }
        self.state = JobState::Cancelled;
        self.ended_at = Some(now);
        Ok(())
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        crate::value::encode(MAGIC, self)
    }

    /// Reads a record value; `None` if it is not a job record within the
    /// bound.
    pub fn decode(value: &[u8]) -> Option<JobRecord> {
        crate::value::decode(MAGIC, MAX_JOB_RECORD_BYTES, value)
    }
}

/// A job's result, as its tenure's members commit it (opaque bytes to
/// them: [`JobResult::encode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The exit code (130: cancelled, 124: timed out, 137: out of memory).
    pub exit_code: i32,
    /// Why it failed, if it did not exit on its own (at most 1 KiB).
    pub error: Option<String>,
    /// The directory blob of its `/out`, if it wrote one.
    pub output: Option<Key>,
    /// When the run that produced it started and ended (its executor's
    /// clock).
    pub started_at: Instant,
    /// See `started_at`.
    pub ended_at: Instant,
    /// The network identity (a libp2p peer id's bytes) of the executor
    /// that produced it: where its output was first provided.
    #[serde(default, with = "serde_bytes_opt")]
    pub executor: Option<Vec<u8>>,
}

/// Largest encoded result.
pub const MAX_RESULT_BYTES: usize = 4096;

impl JobResult {
    /// The result's bytes.
    pub fn encode(&self) -> Vec<u8> {
        crate::value::encode(b"shoal-result\n", self)
    }

    /// Reads a result back; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<JobResult> {
        crate::value::decode(b"shoal-result\n", MAX_RESULT_BYTES, bytes)
    }
}

/// The home's rule for a job's record ([`shoal_overlay::Successor`]):
/// whether the version `new` may replace `held`. A record that ended stays
/// as it ended (a result is committed once); a placement never goes back
/// to an older token (the tokens are the job's grant numbers, which grow
/// with every placement), nor, within one placement, to an earlier state;
/// the submitter does not change. Values that are not job records are not this rule's
/// business.
pub fn successor(held: &[u8], new: &[u8]) -> bool {
    let Some(held) = JobRecord::decode(held) else {
        return true;
    };
    let Some(new) = JobRecord::decode(new) else {
        return false;
    };
    if matches!(held.state, JobState::Ended { .. } | JobState::Cancelled) {
        return new.state == held.state;
    }
    let placed = |state: &JobState| match *state {
        JobState::Placed(p) | JobState::Running(p) | JobState::Ended { by: p, .. } => Some(p),
        _ => None,
    };
    let rank = |state: &JobState| match state {
        JobState::Queued => 0,
        JobState::Placed(_) => 1,
        JobState::Running(_) => 2,
        JobState::Ended { .. } | JobState::Cancelled => 3,
    };
    // Tokens are a job's grant numbers: a later placement has a larger
    // one, and within one placement the state only moves on.
    let stale = match (placed(&held.state), placed(&new.state)) {
        (Some(old), Some(next)) => {
            next.token < old.token || (next.token == old.token && rank(&new.state) < rank(&held.state))
        }
        (Some(_), None) => true,
        _ => false,
    };
    !stale && new.submitter == held.submitter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn key(n: u8) -> Key {
        Key::of_content(&[n])
    }

    fn spec() -> JobSpec {
        JobSpec {
            kind: Some(JobKind::Wasm),
            module: Some(key(1)),
            args: vec!["--n".into(), "3".into()],
            env: [("B".to_string(), "2".to_string()), ("A".to_string(), "1".to_string())].into(),
            inputs: vec![(key(2), "data.bin".into())],
            memory: 64 << 20,
            timeout_ms: 60_000,
            labels: BTreeMap::new(),
            replicas: 0,
        }
    }

    #[test]
    fn a_jobs_key_is_its_spec_submitter_and_nonce() {
        let s = spec();
        let k = s.key(&key(9), 1);
        assert_eq!(k, spec().key(&key(9), 1), "equal specs give equal keys");
        assert_ne!(k, s.key(&key(8), 1), "another submitter");
        assert_ne!(k, s.key(&key(9), 2), "another nonce");
        let mut other = spec();
        other.args.push("x".into());
        assert_ne!(k, other.key(&key(9), 1), "another spec");
        // The environment is a map: its order of insertion does not count.
        let mut reordered = spec();
        reordered.env = [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())].into();
        assert_eq!(k, reordered.key(&key(9), 1));
    }

    #[test]
    fn the_home_keeps_an_ended_record_and_refuses_an_older_token() {
        let queued = JobRecord::new(key(9), t(0));
        let mut placed = queued.clone();
        placed.place(t(1), Placed { peer: key(1), token: 7 }).unwrap();
        let mut ended = placed.clone();
        ended.start(t(2), Placed { peer: key(1), token: 7 }).unwrap();
        ended
            .end(t(3), Placed { peer: key(1), token: 7 }, 0, Some(key(5)))
            .unwrap();
        assert!(successor(&queued.encode(), &placed.encode()));
        assert!(successor(&placed.encode(), &ended.encode()));
        assert!(successor(&queued.encode(), &ended.encode()), "writes may coalesce");
        assert!(successor(&ended.encode(), &ended.encode()));
        assert!(
            !successor(&ended.encode(), &placed.encode()),
            "a result is committed once"
        );
        let mut other_end = ended.clone();
        other_end.state = JobState::Ended {
            by: Placed { peer: key(1), token: 7 },
            exit_code: 1,
            output: None,
        };
        assert!(!successor(&ended.encode(), &other_end.encode()));
        let mut cancelled = placed.clone();
        cancelled.cancel(t(4)).unwrap();
        assert!(!successor(&cancelled.encode(), &ended.encode()));
        let mut older = queued.clone();
        older.place(t(1), Placed { peer: key(1), token: 6 }).unwrap();
        assert!(!successor(&placed.encode(), &older.encode()), "an older grant");
        let mut elsewhere = queued.clone();
        elsewhere.place(t(1), Placed { peer: key(2), token: 1 }).unwrap();
        assert!(
            !successor(&placed.encode(), &elsewhere.encode()),
            "an older grant on another executor"
        );
        let mut later = queued.clone();
        later.place(t(5), Placed { peer: key(2), token: 8 }).unwrap();
        assert!(successor(&placed.encode(), &later.encode()), "a later grant");
        let mut running = placed.clone();
        running.start(t(2), Placed { peer: key(1), token: 7 }).unwrap();
        assert!(successor(&placed.encode(), &running.encode()));
        assert!(
            !successor(&running.encode(), &placed.encode()),
            "one placement's state only moves on"
        );
        assert!(!successor(&running.encode(), &queued.encode()));
        let mut stolen = placed.clone();
        stolen.submitter = key(8);
        assert!(!successor(&placed.encode(), &stolen.encode()));
        assert!(successor(b"not a job", b"anything"));
        assert!(!successor(&placed.encode(), b"not a job"));
    }

    #[test]
    fn only_the_current_placement_changes_the_job_and_a_result_is_committed_once() {
        let mut job = JobRecord::new(key(9), t(0));
        let first = Placed { peer: key(1), token: 7 };
        let second = Placed { peer: key(2), token: 7 };
        assert_eq!(job.start(t(1), first), Err(JobError::Stale { peer: key(1), given: 7 }));
        job.place(t(1), first).unwrap();
        job.start(t(2), first).unwrap();
        assert_eq!(job.start(t(2), first), Err(JobError::Order));
        // Its executor is cut off; the home places the job elsewhere. The
        // same token on another executor is another placement.
        job.place(t(3), second).unwrap();
        assert_eq!(
            job.end(t(4), first, 0, Some(key(5))),
            Err(JobError::Stale { peer: key(1), given: 7 })
        );
        assert_eq!(job.end(t(4), second, 0, None), Err(JobError::Order), "not started yet");
        job.start(t(5), second).unwrap();
        job.end(t(6), second, 3, Some(key(6))).unwrap();
        assert_eq!(
            job.state,
            JobState::Ended {
                by: second,
                exit_code: 3,
                output: Some(key(6))
            }
        );
        assert_eq!(job.end(t(7), second, 0, None), Err(JobError::Ended), "committed once");
        assert_eq!(job.place(t(7), first), Err(JobError::Ended));
        assert_eq!(job.cancel(t(7)), Err(JobError::Ended));
        assert_eq!(
            (job.queued_at, job.placed_at, job.started_at, job.ended_at),
            (t(0), Some(t(3)), Some(t(5)), Some(t(6)))
        );
    }

    #[test]
    fn a_cancelled_job_takes_no_result() {
        let mut job = JobRecord::new(key(9), t(0));
        let by = Placed { peer: key(1), token: 1 };
        job.place(t(1), by).unwrap();
        job.start(t(2), by).unwrap();
        job.cancel(t(3)).unwrap();
        assert_eq!(job.end(t(4), by, 0, None), Err(JobError::Ended));
        assert_eq!(job.state, JobState::Cancelled);
    }

    #[test]
    fn records_round_trip_within_their_bound() {
        let mut job = JobRecord::new(key(9), t(0));
        job.place(t(1), Placed { peer: key(1), token: 2 }).unwrap();
        assert_eq!(JobRecord::decode(&job.encode()), Some(job.clone()));
        assert_eq!(JobRecord::decode(b"shoal-pin-v1\n"), None);
        let mut padded = job.encode();
        padded.resize(MAGIC.len() + MAX_JOB_RECORD_BYTES + 1, 0);
        assert_eq!(JobRecord::decode(&padded), None);
    }
}
