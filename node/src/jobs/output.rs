//! Reading a job's output: from the log kept here (a job this peer
//! submitted or runs), else from its executor, found through the job's
//! record at its home.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::compute::engine::Stream as Output;

use super::Jobs;
use super::protocol::{Event, MAX_ANSWER_BYTES};

/// Output bytes one read returns, at most.
const READ_BYTES: usize = 1 << 20;

/// One piece of a job's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A job's output from one offset on (`GET /v1/jobs/ID/output`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutputView {
    /// The output, in order.
    pub chunks: Vec<OutputChunk>,
    /// The offset to ask from next.
    pub next: u64,
    /// Whether the job has ended and all its output was given.
    pub ended: bool,
    /// The job as it ended (when `ended` and this peer knows it), which
    /// saves the caller a status call.
    #[serde(default)]
    pub job: Option<super::JobView>,
}

impl Jobs<'_> {
    /// `job`'s output from byte `from` on, waiting up to `wait` for some if
    /// there is none yet; `None` if neither this peer nor the executor the
    /// job's record names knows the job.
    pub async fn output(self, job: Key, from: u64, wait: Duration) -> Result<Option<OutputView>, crate::NodeError> {
        if let Some(log) = self.log_of(&job) {
            let mut seen = log.subscribe();
            seen.mark_unchanged();
            let events = log.events_from(from, READ_BYTES);
            let news = events
                .iter()
                .any(|e| matches!(e, Event::Output { .. } | Event::Ended { .. }));
            if !news && !wait.is_zero() {
                log.changed_within(&mut seen, wait).await;
            }
            let mut view = view_of(from, log.events_from(from, READ_BYTES));
            if view.ended {
                view.job = self.local_view(&job);
            }
            return Ok(Some(view));
        }
        let Some((_, mut stream)) = self.remote_events(job, from).await? else {
            return Ok(None);
        };
        let mut events = Vec::new();
        let mut given = 0usize;
        let deadline = tokio::time::Instant::now() + wait.max(Duration::from_millis(200));
        loop {
            let read = tokio::time::timeout_at(
                deadline,
                crate::codec::read_cbor::<Event, _>(&mut stream, MAX_ANSWER_BYTES),
            );
            match read.await {
                Ok(Ok(Event::Unknown)) => return Ok(None),
                Ok(Ok(event)) => {
                    let ended = matches!(event, Event::Ended { .. });
                    if let Event::Output { bytes, .. } = &event {
                        given += bytes.len();
                    }
                    events.push(event);
                    if ended || given >= READ_BYTES {
                        break;
                    }
                }
                // What arrived by the deadline, or before the stream broke.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(Some(view_of(from, events)))
    }
}

/// The output among `events` that continues from `from`, in order.
fn view_of(from: u64, events: Vec<Event>) -> OutputView {
    let mut next = from;
    let mut chunks = Vec::new();
    let mut ended = false;
    for event in events {
        match event {
            Event::Output { stream, offset, bytes } if offset == next => {
                next += bytes.len() as u64;
                chunks.push(OutputChunk {
                    stream: match stream {
                        Output::Stdout => "stdout".into(),
                        Output::Stderr => "stderr".into(),
                    },
                    bytes,
                });
            }
            Event::Ended { .. } => ended = true,
            _ => {}
        }
    }
    OutputView {
        chunks,
        next,
        ended,
        job: None,
    }
}
