//! `/shoal/jobs/1` on the wire: what a submitter asks an executor, and
//! what the executor answers.
//!
//! Every message is one frame of [`crate::codec`] (a length, then CBOR).
//! A stream carries one [`Request`]; the executor answers with one
//! [`Answer`], except for [`Request::Watch`], answered with [`Event`]s
//! until the job ends. Who asks is the stream's peer, authenticated by the
//! connection: a claim for a native job is judged by that, never by a
//! field of the request.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::compute::engine::Stream as Output;
use shoal_resources::compute::{JobKind, JobSpec, Needs, SlotOffer};
use shoal_resources::quorum::{Saved, Timing};

/// The stream protocol of jobs.
pub const JOBS_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/jobs/1");

/// Largest request frame accepted (a job's spec: its arguments,
/// environment and inputs).
pub(crate) const MAX_REQUEST_BYTES: usize = 128 * 1024;
/// Largest answer or event frame accepted.
pub(crate) const MAX_ANSWER_BYTES: usize = 2 * OUTPUT_CHUNK + 64 * 1024;
/// Output bytes per [`Event::Output`], at most.
pub(crate) const OUTPUT_CHUNK: usize = 64 * 1024;

/// Most arguments, environment variables or inputs a job may have.
pub const MAX_SPEC_ITEMS: usize = 256;
/// Longest argument, variable, value or input name, bytes.
pub const MAX_SPEC_STRING: usize = 4096;
/// Largest spec, encoded: what an executor keeps for every job it queues.
pub const MAX_SPEC_BYTES: usize = 16 * 1024;

/// What a job needs of a slot, on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WireNeeds {
    pub(crate) kind: Option<JobKind>,
    pub(crate) memory: u64,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
}

impl From<&WireNeeds> for Needs {
    fn from(w: &WireNeeds) -> Self {
        Needs {
            kind: w.kind,
            memory: w.memory,
            labels: w.labels.clone(),
        }
    }
}

/// A request to an executor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// How loaded are you, and would a job that needs this fit?
    Probe(WireNeeds),
    /// Run (or queue) this job as grant `n` of its tenure, which the
    /// `members` keep: renew it with them, start once a majority confirms
    /// it, commit the result to them. Sent by whoever supervises the job
    /// (its submitter first, then its home).
    Grant {
        /// The job's key.
        job: Key,
        /// Its submission (spec, nonce, submitter, signed).
        #[serde(with = "serde_bytes")]
        submission: Vec<u8>,
        /// The grant number.
        n: u64,
        /// The members that keep the job's tenure (peer ids' bytes).
        members: Vec<serde_bytes::ByteBuf>,
        /// The tenure's term and margin.
        timing: Timing,
        /// The checkpoint to start from.
        from: Option<Saved>,
        /// A later snapshot than `from`, saved by the job's last executor
        /// as it paused the job for a move (its home keeps it once this
        /// grant saves it there): go on from it if it can be fetched —
        /// from whoever sent this grant first — else from `from`. It is
        /// trusted as `from` is: as the grant's sender.
        #[serde(default)]
        newer: Option<Saved>,
    },
    /// Grant `n` of `job` got its tenure: renew at once.
    Go { job: Key, n: u64 },
    /// Grant `n` of `job` did not get its tenure: drop it.
    Drop { job: Key, n: u64 },
    /// Stop `job` for good (only its submitter may ask): its result is
    /// that it was cancelled.
    Cancel { job: Key },
    /// Save `job`'s `/ckpt` now (only its submitter may ask).
    Checkpoint { job: Key },
    /// Send me `job`'s output from byte `from` on, then how it ended.
    Watch { job: Key, from: u64 },
    /// Stop `job` here and give its tenure back, then place it anew on
    /// another peer (`to`, a peer id's bytes, if given) from its newest
    /// checkpoint (only its submitter may ask). Answered once placed.
    Release { job: Key, to: Option<serde_bytes::ByteBuf> },
    /// Get ready to go on with a job of `module` from `checkpoint`: you
    /// are about to be granted it (a stepping module moved by a drain or
    /// a move). Compile the module and fetch the checkpoint now, so that
    /// the job's pause does not wait for either. Answered once ready.
    Prepare { module: Key, checkpoint: Option<Key> },
    /// To a submitter, from the executor that committed them: these jobs
    /// of yours ended, with these results (a job's committed
    /// [`shoal_resources::compute::JobResult`]), at most [`MAX_NOTICES`].
    /// It keeps a detached job's state current where it was submitted.
    Ended(Vec<(Key, serde_bytes::ByteBuf)>),
}

/// Ended jobs told in one [`Request::Ended`], at most.
pub(crate) const MAX_NOTICES: usize = 256;

/// An executor's answer to one request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// The load now, and the offer.
    Load {
        free: u32,
        queued: u32,
        running: u32,
        fits: bool,
        offer: Option<SlotOffer>,
    },
    /// The grant is taken: it runs once its tenure is confirmed, or waits
    /// at `position` in the queue (0: a slot is free now).
    Accepted { position: u32 },
    /// Done.
    Done,
    /// The job was moved: it is grant `n` on `peer` (a peer id's bytes).
    Moved { peer: serde_bytes::ByteBuf, n: u64 },
    /// Refused, and why.
    Refused(String),
}

/// What a watcher hears about a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    /// Output: `bytes` were written to `stream`; `offset` counts all output
    /// before them.
    Output {
        stream: Output,
        offset: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The job started (times in microseconds of the executor's clock).
    Started { at: u64 },
    /// The job ended: its exit code, why it failed if it did, and the
    /// directory blob of its `/out` (if it wrote anything).
    Ended {
        exit_code: i32,
        error: Option<String>,
        output: Option<Key>,
        at: u64,
    },
    /// The executor does not know the job (or forgot it).
    Unknown,
    /// The executor lost the job's tenure before its result was
    /// committed: the job's home places it again (follow it through its
    /// record).
    Lost { why: String },
}

/// Whether a spec is within the bounds an executor accepts: a reason if
/// not.
pub(crate) fn check_spec(spec: &JobSpec) -> Result<(), String> {
    let strings = spec
        .args
        .iter()
        .chain(spec.env.keys())
        .chain(spec.env.values())
        .chain(spec.inputs.iter().map(|(_, name)| name))
        .chain(spec.labels.keys())
        .chain(spec.labels.values());
    if spec.args.len() > MAX_SPEC_ITEMS || spec.env.len() > MAX_SPEC_ITEMS || spec.inputs.len() > MAX_SPEC_ITEMS {
        return Err(format!("more than {MAX_SPEC_ITEMS} arguments, variables or inputs"));
    }
    if strings.clone().any(|s| s.len() > MAX_SPEC_STRING) {
        return Err(format!("an argument, variable or name over {MAX_SPEC_STRING} bytes"));
    }
    for (_, name) in &spec.inputs {
        check_input_name(name)?;
    }
    let size = spec.canonical().len();
    if size > MAX_SPEC_BYTES {
        return Err(format!(
            "the job's arguments, environment and inputs take {size} bytes, over the {MAX_SPEC_BYTES}-byte cap"
        ));
    }
    if spec.kind == Some(JobKind::Native) && spec.args.is_empty() {
        return Err("a native job names its command".into());
    }
    if spec.kind != Some(JobKind::Native) && spec.module.is_none() {
        return Err("a WebAssembly job names its module".into());
    }
    Ok(())
}

/// An input's name is one plain file name under `/in`.
pub(crate) fn check_input_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("input name {name:?} is not a plain file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm() -> JobSpec {
        JobSpec {
            kind: Some(JobKind::Wasm),
            module: Some(Key::of_content(b"module")),
            ..JobSpec::default()
        }
    }

    #[test]
    fn specs_past_their_bounds_are_refused_with_the_reason() {
        assert_eq!(check_spec(&wasm()), Ok(()));
        let mut big = wasm();
        big.env = (0..20).map(|i| (format!("K{i}"), "v".repeat(1000))).collect();
        assert!(check_spec(&big).unwrap_err().contains("16384-byte cap"));
        let mut long = wasm();
        long.args = vec!["x".repeat(MAX_SPEC_STRING + 1)];
        assert!(check_spec(&long).unwrap_err().contains("over 4096 bytes"));
        let mut many = wasm();
        many.args = vec![String::new(); MAX_SPEC_ITEMS + 1];
        assert!(check_spec(&many).unwrap_err().contains("more than 256"));
        for name in ["", ".", "..", "a/b", "../x", "nul\0"] {
            let mut input = wasm();
            input.inputs = vec![(Key::of_content(b"in"), name.to_string())];
            assert!(check_spec(&input).is_err(), "{name:?}");
        }
        let mut no_module = wasm();
        no_module.module = None;
        assert!(check_spec(&no_module).is_err());
        let native = JobSpec {
            kind: Some(JobKind::Native),
            ..JobSpec::default()
        };
        assert!(check_spec(&native).unwrap_err().contains("names its command"));
    }
}
