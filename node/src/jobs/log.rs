//! A job's output and end as one log: the executor writes it as the job
//! runs, a submitter mirrors it from the executor's events, and readers
//! (the CLI, remote watchers) read it from any offset and wait for more.

use std::sync::Mutex;

use shoal_overlay::Key;
use shoal_resources::compute::engine::{Sink, Stream};
use tokio::sync::watch;

use super::protocol::{Event, OUTPUT_CHUNK};

/// Output a mirror keeps of one job, at most: an executor's own cap on a
/// job's output is 64 MiB by default, and one that sends more than this
/// is not believed past it.
pub const MAX_MIRRORED_BYTES: u64 = 256 << 20;

/// How a job ended, as its log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code.
    pub exit_code: i32,
    /// Why it failed, if it did not exit on its own.
    pub error: Option<String>,
    /// The directory blob of its `/out`.
    pub output: Option<Key>,
    /// When (microseconds since the Unix epoch, the executor's clock).
    pub at: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Output chunks: stream, offset of the first byte, bytes.
    chunks: Vec<(Stream, u64, Vec<u8>)>,
    len: u64,
    started: Option<u64>,
    ended: Option<Ended>,
    /// Why this run lost the job before it ended (its home places it
    /// again).
    lost: Option<String>,
}

/// A job's log.
#[derive(Debug)]
pub(crate) struct JobLog {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Default for JobLog {
    fn default() -> Self {
        JobLog {
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Sink for JobLog {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            let offset = inner.len;
            inner.len += bytes.len() as u64;
            inner.chunks.push((stream, offset, bytes.to_vec()));
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

impl JobLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the start.
    pub(crate) fn start(&self, at: u64) {
        self.lock().started.get_or_insert(at);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records the end (the first one counts).
    pub(crate) fn end(&self, ended: Ended) {
        self.lock().ended.get_or_insert(ended);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records that this run lost the job (its tenure) before its end.
    pub(crate) fn lose(&self, why: &str) {
        {
            let mut inner = self.lock();
            if inner.ended.is_none() {
                inner.lost.get_or_insert_with(|| why.to_string());
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Why this run lost the job, if it did.
    pub(crate) fn lost(&self) -> Option<String> {
        self.lock().lost.clone()
    }

    /// Applies an event heard from the executor (a mirror's input); output
    /// at an offset other than the log's end is skipped (a repeat), and so
    /// is output past [`MAX_MIRRORED_BYTES`].
    pub(crate) fn apply(&self, event: &Event) {
        match event {
            Event::Output { stream, offset, bytes } => {
                let len = self.lock().len;
                if *offset == len && len + bytes.len() as u64 <= MAX_MIRRORED_BYTES {
                    self.write(*stream, bytes);
                }
            }
            Event::Started { at } => self.start(*at),
            Event::Ended {
                exit_code,
                error,
                output,
                at,
            } => self.end(Ended {
                exit_code: *exit_code,
                error: error.clone(),
                output: *output,
                at: *at,
            }),
            Event::Unknown | Event::Lost { .. } => {}
        }
    }

    /// When it started and how it ended, so far.
    pub(crate) fn progress(&self) -> (Option<u64>, Option<Ended>) {
        let inner = self.lock();
        (inner.started, inner.ended.clone())
    }

    /// Output bytes so far.
    pub(crate) fn len(&self) -> u64 {
        self.lock().len
    }

    /// The events from output offset `from` on, at most `max_bytes` of
    /// output (in chunks of at most [`OUTPUT_CHUNK`]), then the start and
    /// end if known and all output was given.
    pub(crate) fn events_from(&self, from: u64, max_bytes: usize) -> Vec<Event> {
        let inner = self.lock();
        let mut events = Vec::new();
        let mut given = 0usize;
        if let Some(at) = inner.started {
            events.push(Event::Started { at });
        }
        let first = inner
            .chunks
            .partition_point(|(_, offset, bytes)| offset + bytes.len() as u64 <= from);
        for (stream, offset, bytes) in &inner.chunks[first..] {
            let skip = from.saturating_sub(*offset) as usize;
            for (i, piece) in bytes[skip..].chunks(OUTPUT_CHUNK).enumerate() {
                if given >= max_bytes {
                    return events;
                }
                events.push(Event::Output {
                    stream: *stream,
                    offset: offset + (skip + i * OUTPUT_CHUNK) as u64,
                    bytes: piece.to_vec(),
                });
                given += piece.len();
            }
        }
        if let Some(ended) = &inner.ended {
            events.push(Event::Ended {
                exit_code: ended.exit_code,
                error: ended.error.clone(),
                output: ended.output,
                at: ended.at,
            });
        } else if let Some(why) = &inner.lost {
            events.push(Event::Lost { why: why.clone() });
        }
        events
    }

    /// Waits until the log changes (or `within` passes).
    pub(crate) async fn changed_within(&self, seen: &mut watch::Receiver<u64>, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, seen.changed()).await;
    }

    /// A receiver of change notices.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(events: &[Event]) -> Vec<(u64, Vec<u8>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Output { offset, bytes, .. } => Some((*offset, bytes.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_log_is_read_from_any_offset_and_a_mirror_skips_repeats() {
        let log = JobLog::default();
        log.start(5);
        log.write(Stream::Stdout, b"hello ");
        log.write(Stream::Stderr, b"world");
        assert_eq!(
            output(&log.events_from(0, usize::MAX)),
            vec![(0, b"hello ".to_vec()), (6, b"world".to_vec())]
        );
        assert_eq!(output(&log.events_from(8, usize::MAX)), vec![(8, b"rld".to_vec())]);
        assert!(output(&log.events_from(11, usize::MAX)).is_empty());
        log.end(Ended {
            exit_code: 2,
            error: None,
            output: None,
            at: 9,
        });
        let all = log.events_from(0, usize::MAX);
        assert!(matches!(all.first(), Some(Event::Started { at: 5 })));
        assert!(matches!(all.last(), Some(Event::Ended { exit_code: 2, .. })));

        let mirror = JobLog::default();
        for event in all.iter().chain(all.iter()) {
            mirror.apply(event);
        }
        assert_eq!(mirror.len(), 11, "the repeat was skipped");
        assert_eq!(mirror.progress().1.map(|e| e.exit_code), Some(2));
    }

    #[test]
    fn a_mirror_keeps_no_more_than_its_cap_whatever_the_executor_sends() {
        let mirror = JobLog::default();
        let chunk = vec![0u8; OUTPUT_CHUNK];
        let mut offset = 0u64;
        while offset <= MAX_MIRRORED_BYTES {
            mirror.apply(&Event::Output {
                stream: Stream::Stdout,
                offset,
                bytes: chunk.clone(),
            });
            offset += chunk.len() as u64;
        }
        assert_eq!(mirror.len(), MAX_MIRRORED_BYTES);
    }

    #[test]
    fn a_read_stops_after_its_byte_budget_and_gives_no_end_before_all_output() {
        let log = JobLog::default();
        log.write(Stream::Stdout, &vec![b'x'; OUTPUT_CHUNK * 3]);
        log.end(Ended {
            exit_code: 0,
            error: None,
            output: None,
            at: 1,
        });
        let events = log.events_from(0, OUTPUT_CHUNK);
        assert_eq!(output(&events).len(), 1);
        assert!(!events.iter().any(|e| matches!(e, Event::Ended { .. })));
        let rest = log.events_from(OUTPUT_CHUNK as u64, usize::MAX);
        assert_eq!(
            output(&rest).iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![OUTPUT_CHUNK as u64, 2 * OUTPUT_CHUNK as u64]
        );
        assert!(matches!(rest.last(), Some(Event::Ended { .. })));
    }
}
