//! Long operations (downloads, shares) as numbered jobs that the CLI
//! polls.

use std::sync::Arc;

use axum::http::StatusCode;

use super::{ApiError, failure};

/// Finished jobs (downloads, shares) kept for their callers to read, at
/// most, of each kind.
const KEPT_TASKS: usize = 256;

/// Long operations (downloads, shares) run as numbered jobs that the CLI
/// polls: every poll is a short call, so a daemon that stops answering is
/// noticed within a call's timeout, however long the job.
pub(super) struct Tasks<T> {
    next: u64,
    running: std::collections::BTreeMap<u64, Arc<Task<T>>>,
}

impl<T> Default for Tasks<T> {
    fn default() -> Self {
        Tasks {
            next: 0,
            running: std::collections::BTreeMap::new(),
        }
    }
}

impl<T> Tasks<T> {
    /// Numbers `job` and keeps it, dropping the oldest past [`KEPT_TASKS`].
    pub(super) fn add(&mut self, job: Arc<Task<T>>) -> u64 {
        self.next += 1;
        while self.running.len() >= KEPT_TASKS {
            let Some(oldest) = self.running.keys().next().copied() else {
                break;
            };
            self.running.remove(&oldest);
        }
        self.running.insert(self.next, job);
        self.next
    }
}

/// Job number `n` of `jobs`.
pub(super) fn numbered<T>(jobs: &std::sync::Mutex<Tasks<T>>, n: u64, kind: &str) -> Result<Arc<Task<T>>, ApiError> {
    jobs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .running
        .get(&n)
        .cloned()
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("no {kind} {n}")))
}

pub(super) struct Task<T> {
    /// What it works on: a content id, or a path.
    pub(super) label: String,
    pub(super) progress: Arc<crate::files::Progress>,
    /// `Some(Ok(..))` once done, `Some(Err(..))` on failure.
    pub(super) outcome: std::sync::Mutex<Option<Result<T, String>>>,
    /// Stops it (`DELETE /v1/downloads/N`).
    pub(super) abort: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl<T: Clone + Send + 'static> Task<T> {
    pub(super) fn new(label: String) -> Arc<Self> {
        Arc::new(Task {
            label,
            progress: Arc::default(),
            outcome: std::sync::Mutex::new(None),
            abort: std::sync::Mutex::new(None),
        })
    }

    pub(super) fn outcome(&self) -> Option<Result<T, String>> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `work` to its end and keeps its outcome. In a task of its own,
    /// so that a panic in it still ends the job with an answer instead of
    /// leaving its caller polling.
    pub(super) fn run<F>(self: &Arc<Self>, work: F, cancelled: String)
    where
        F: std::future::Future<Output = Result<T, crate::NodeError>> + Send + 'static,
    {
        let job = self.clone();
        tokio::spawn(async move {
            let inner = tokio::spawn(work);
            *job.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner.abort_handle());
            let outcome = match inner.await {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) if e.is_cancelled() => Err(cancelled),
                Err(e) => Err(format!("it failed inside the daemon ({e}); see its log")),
            };
            *job.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        });
    }
}
