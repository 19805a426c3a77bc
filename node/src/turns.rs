//! One task at a time per key: a task takes its key's turn and holds it
//! until the turn is dropped; another task asking for the same key waits.
//! Downloads use it (one download of a blob at a time).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shoal_overlay::Key;

/// The blobs being downloaded, one download at a time per blob: a second
/// download of a blob (another `get`, a pin duty, a directory that lists
/// it too) waits until the first has fetched and filed it, then finds it
/// held, instead of writing the same download beside it or reading the
/// store's copy while the first moves it to its `-o`.
#[derive(Clone, Default)]
pub(crate) struct Turns(Arc<Mutex<BTreeMap<Key, Arc<tokio::sync::Mutex<()>>>>>);

/// A fetch's turn at its blob, until dropped.
pub(crate) struct Turn {
    id: Key,
    in_flight: Turns,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Turns {
    /// Waits until no other fetch of `id` runs here.
    pub(crate) async fn turn(&self, id: Key) -> Turn {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id).or_default().clone()
        };
        Turn {
            id,
            in_flight: self.clone(),
            _held: lock.lock_owned().await,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut map = self.in_flight.0.lock().unwrap_or_else(|p| p.into_inner());
        // The map's handle and this turn's are the only ones left: nobody
        // waits, and the entry goes.
        if map.get(&self.id).is_some_and(|lock| Arc::strong_count(lock) <= 2) {
            map.remove(&self.id);
        }
    }
}
