//! The store's tests: imports, ranges moving between stores, in-place
//! sources, the quota, and downloads resuming; and the helpers they share
//! with the tests beside `import` and `partial`.

use super::*;
use crate::FetchPlan;
use crate::blob::GROUP_BYTES;
use std::fs::OpenOptions;
use std::sync::atomic::AtomicU64;

/// A `now` at which no download has been given up yet.
const NOTHING_GIVEN_UP: std::time::SystemTime = UNIX_EPOCH;

pub(super) fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fetches every group `fetch` still lacks from store `from` into
/// `partial`, as one provider; returns how many groups were asked for.
fn pull(from: &BlobStore, info: BlobInfo, partial: &Partial, fetch: &mut FetchPlan) -> u64 {
    fetch.add_provider(0);
    let mut asked = 0;
    while let Some(range) = fetch.next_range(0) {
        asked += range.end - range.start;
        let mut wire = Vec::new();
        from.encode(&info.id, &range, &mut wire).unwrap();
        partial
            .receive(&range, wire.as_slice(), |g| {
                fetch.verified(0, g);
            })
            .unwrap();
        fetch.finished(0, range, std::time::Duration::from_millis(1));
    }
    asked
}

pub(super) fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn import_gives_the_b3sum_id_and_ranges_move_between_stores() {
    let dir = temp("move");
    let bytes = content(3 * GROUP_BYTES as usize + 1000);
    let path = dir.join("file");
    std::fs::write(&path, &bytes).unwrap();
    let a = BlobStore::open(&dir.join("a")).unwrap();
    let info = a.import(&path, Import::Copy).unwrap();
    assert_eq!(info.id, Key::of_content(&bytes));
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(a.list().unwrap().len(), 1);

    let b = BlobStore::open(&dir.join("b")).unwrap();
    let partial = b.partial(info).unwrap();
    let mut fetch = FetchPlan::new(info.size, partial.saved_have());
    pull(&a, info, &partial, &mut fetch);
    assert!(fetch.is_complete());
    partial.finish(None).unwrap();
    assert_eq!(
        std::fs::read(dir.join("b").join(format!("{}.data", info.id))).unwrap(),
        bytes
    );
    // The outboard built from the parents that arrived is complete: b
    // serves the blob, and its outboard equals the one an import makes.
    let mut wire = Vec::new();
    b.encode(&info.id, &(0..4), &mut wire).unwrap();
    assert_eq!(verify_range(info, &(0..4), wire.as_slice()).unwrap(), info.size);
    assert_eq!(
        std::fs::read(dir.join("b").join(format!("{}.obao", info.id))).unwrap(),
        std::fs::read(dir.join("a").join(format!("{}.obao", info.id))).unwrap()
    );
    let out = dir.join("exported");
    b.export(&info.id, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(b.export(&info.id, &out).is_err(), "export never overwrites");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_blob_or_range_is_received_without_a_write() {
    let dir = temp("empty");
    std::fs::write(dir.join("file"), b"").unwrap();
    let a = BlobStore::open(&dir.join("a")).unwrap();
    let info = a.import(&dir.join("file"), Import::Copy).unwrap();
    assert_eq!(info.size, 0);
    let b = BlobStore::open(&dir.join("b")).unwrap();
    let partial = b.partial(info).unwrap();
    let mut wire = Vec::new();
    a.encode(&info.id, &(0..1), &mut wire).unwrap();
    assert!(partial.receive(&(0..1), &wire, |_| {}).is_ok());
    assert!(partial.receive(&(3..3), &[], |_| {}).is_ok());
    assert_eq!(verify_range(info, &(3..3), &[]).unwrap(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_group_is_on_disk_with_its_hashes_when_it_is_reported() {
    // More than one write run, and a range that starts mid-blob.
    use std::os::unix::fs::FileExt;
    let dir = temp("runs");
    let groups = (2 * WRITE_RUN_BYTES as u64) / GROUP_BYTES + 7;
    let bytes = content((groups * GROUP_BYTES) as usize - 100);
    std::fs::write(dir.join("file"), &bytes).unwrap();
    let a = BlobStore::open(&dir.join("a")).unwrap();
    let info = a.import(&dir.join("file"), Import::Copy).unwrap();
    let b = BlobStore::open(&dir.join("b")).unwrap();
    let partial = b.partial(info).unwrap();
    let part = File::open(b.path(&info.id, "part")).unwrap();
    let mut reported = Vec::new();
    for range in [3..groups, 0..3] {
        let mut wire = Vec::new();
        a.encode(&info.id, &range, &mut wire).unwrap();
        partial
            .receive(&range, wire.as_slice(), |g| {
                let start = (g * GROUP_BYTES) as usize;
                let end = (start + GROUP_BYTES as usize).min(bytes.len());
                let mut on_disk = vec![0u8; end - start];
                part.read_exact_at(&mut on_disk, start as u64).unwrap();
                assert!(on_disk == bytes[start..end], "group {g} reported before it was written");
                // Its hashes too: the files on disk alone serve it,
                // verified against the id.
                let on_disk = PreOrderOutboard {
                    root: hash_of_key(&info.id),
                    tree: BaoTree::new(info.size, BLOCK_SIZE),
                    data: File::open(b.path(&info.id, "opart")).unwrap(),
                };
                let one = chunk_ranges(&(g..g + 1));
                assert!(
                    encode_ranges_validated(&part, &on_disk, &one, io::sink()).is_ok(),
                    "group {g} reported before its hashes were written"
                );
                reported.push(g);
            })
            .unwrap();
    }
    reported.sort_unstable();
    assert_eq!(reported, (0..groups).collect::<Vec<_>>());
    // The outboard was filled as the data arrived: the finished blob
    // serves and verifies without hashing it again.
    let got = partial.finish(None).unwrap();
    assert_eq!(got.id, info.id);
    let mut wire = Vec::new();
    b.encode(&info.id, &(0..groups), &mut wire).unwrap();
    assert_eq!(
        verify_range(info, &(0..groups), wire.as_slice()).unwrap(),
        bytes.len() as u64
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tampered_data_is_caught_group_by_group() {
    let dir = temp("tamper");
    let bytes = content(4 * GROUP_BYTES as usize);
    std::fs::write(dir.join("file"), &bytes).unwrap();
    let a = BlobStore::open(&dir.join("a")).unwrap();
    let info = a.import(&dir.join("file"), Import::Copy).unwrap();
    let mut wire = Vec::new();
    a.encode(&info.id, &(0..4), &mut wire).unwrap();
    // Flip one byte near the end: the groups before it still verify.
    let at = wire.len() - 10;
    wire[at] ^= 1;
    let b = BlobStore::open(&dir.join("b")).unwrap();
    let partial = b.partial(info).unwrap();
    let mut good = Vec::new();
    let result = partial.receive(&(0..4), wire.as_slice(), |g| good.push(g));
    assert!(matches!(result, Err(ReceiveError::BadData)));
    assert_eq!(good, vec![0, 1, 2]);
    assert!(matches!(
        verify_range(info, &(0..4), wire.as_slice()),
        Err(ReceiveError::BadData)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn in_place_blobs_are_served_until_their_source_changes() {
    let dir = temp("inplace");
    let path = dir.join("file");
    std::fs::write(&path, content(50_000)).unwrap();
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let info = store.import(&path, Import::InPlace).unwrap();
    assert!(!dir.join("s").join(format!("{}.data", info.id)).exists());
    let mut wire = Vec::new();
    store.encode(&info.id, &(0..4), &mut wire).unwrap();
    assert_eq!(verify_range(info, &(0..4), wire.as_slice()).unwrap(), 50_000);
    assert!(store.contains(&info.id));
    std::fs::write(&path, content(50_001)).unwrap();
    assert!(matches!(
        store.encode(&info.id, &(0..4), &mut Vec::new()),
        Err(StoreError::SourceChanged { .. })
    ));
    // No longer held, so it is fetched again — into the store's own copy.
    assert!(!store.contains(&info.id));
    let other = BlobStore::open(&dir.join("other")).unwrap();
    std::fs::write(dir.join("original"), content(50_000)).unwrap();
    assert_eq!(other.import(&dir.join("original"), Import::Copy).unwrap(), info);
    let partial = store.partial(info).unwrap();
    let mut fetch = FetchPlan::new(info.size, None);
    pull(&other, info, &partial, &mut fetch);
    partial.finish(None).unwrap();
    assert!(store.contains(&info.id));
    let mut wire = Vec::new();
    store.encode(&info.id, &(0..4), &mut wire).unwrap();
    assert_eq!(verify_range(info, &(0..4), wire.as_slice()).unwrap(), 50_000);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        content(50_001),
        "the user's file is left alone"
    );
    // A change of the modification time alone counts too (a rewrite
    // of the same length).
    let touched = dir.join("touched");
    std::fs::write(&touched, content(9_000)).unwrap();
    let touched_id = store.import(&touched, Import::InPlace).unwrap().id;
    assert!(store.contains(&touched_id));
    let later = std::fs::metadata(&touched).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    File::options()
        .append(true)
        .open(&touched)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(
        store.changed_source(&touched_id),
        Some(std::fs::canonicalize(&touched).unwrap())
    );
    assert!(!store.contains(&touched_id));
    // A source that is gone is not held either.
    let gone = dir.join("gone");
    std::fs::write(&gone, content(7_000)).unwrap();
    let gone_id = store.import(&gone, Import::InPlace).unwrap().id;
    assert!(store.contains(&gone_id));
    std::fs::remove_file(&gone).unwrap();
    assert!(!store.contains(&gone_id));
    assert!(matches!(
        store.import(&dir.join("missing"), Import::Copy),
        Err(StoreError::Unreadable { .. })
    ));
    assert!(matches!(
        store.encode(&Key::of_content(b"x"), &(0..1), &mut Vec::new()),
        Err(StoreError::Unknown(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Gives each blob a distinct use time, in the order given.
fn used_in_order(store_dir: &Path, ids: &[Key]) {
    for (n, id) in ids.iter().enumerate() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + n as u64);
        let meta = store_dir.join(format!("{id}.meta"));
        OpenOptions::new()
            .append(true)
            .open(meta)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

#[test]
fn an_import_makes_room_once_its_id_is_known_and_a_refusal_drops_nothing() {
    let dir = temp("room");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let file = |n: u8, len: usize| {
        let path = dir.join(format!("f{n}"));
        std::fs::write(&path, content(len + usize::from(n))).unwrap();
        path
    };
    let (a, b) = (file(0, 100_000), file(1, 100_000));
    let ids = [
        store.import(&a, Import::Copy).unwrap().id,
        store.import(&b, Import::Copy).unwrap().id,
    ];
    used_in_order(&dir.join("s"), &ids);
    let quota = store.usage().unwrap() + 20_000;
    // Importing b again needs no room: nothing goes.
    let mut room = Room::new(quota, NOTHING_GIVEN_UP);
    assert_eq!(
        store
            .import_within(&b, Import::Copy, Some(&mut room), &AtomicU64::new(0))
            .unwrap()
            .id,
        ids[1]
    );
    assert!(room.dropped().is_empty());
    assert!(store.contains(&ids[0]) && store.contains(&ids[1]));
    // A new file needs room: the least recently used (a) goes.
    let c = file(2, 100_000);
    let mut room = Room::new(quota, NOTHING_GIVEN_UP);
    let c_id = store
        .import_within(&c, Import::Copy, Some(&mut room), &AtomicU64::new(0))
        .unwrap()
        .id;
    assert_eq!(room.dropped(), &[ids[0]]);
    assert!(store.contains(&ids[1]) && store.contains(&c_id));
    assert!(store.usage().unwrap() <= quota);
    // Pinned, b stays; a file that cannot fit beside it even with c
    // dropped is refused — c is still there and no temporary file is.
    store.set_pinned(&ids[1], true).unwrap();
    let before = store.usage().unwrap();
    let big = file(3, 150_000);
    let mut room = Room::new(quota, NOTHING_GIVEN_UP);
    let refused = store
        .import_within(&big, Import::Copy, Some(&mut room), &AtomicU64::new(0))
        .unwrap_err();
    assert!(matches!(refused, StoreError::QuotaExceeded { .. }), "{refused}");
    assert!(room.dropped().is_empty());
    assert!(store.contains(&c_id) && store.contains(&ids[1]));
    assert_eq!(store.usage().unwrap(), before);
    // make_room alone refuses the same way, before dropping anything.
    assert!(store.make_room(150_000, quota, &[], NOTHING_GIVEN_UP).is_err());
    assert!(store.contains(&c_id));
    // An import in place of a blob held as a store copy keeps the copy,
    // and leaves nothing else behind.
    let before = store.usage().unwrap();
    assert_eq!(store.import(&c, Import::InPlace).unwrap().id, c_id);
    assert!(dir.join("s").join(format!("{c_id}.data")).exists());
    let entry = store.list().unwrap().into_iter().find(|e| e.info.id == c_id).unwrap();
    assert_eq!(entry.in_place, None);
    assert_eq!(store.usage().unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_import_keeps_its_own_earlier_files_when_it_makes_room() {
    let dir = temp("room-dir");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let old = dir.join("old");
    std::fs::write(&old, content(100_000)).unwrap();
    let old_id = store.import(&old, Import::Copy).unwrap().id;
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a"), content(100_001)).unwrap();
    std::fs::write(tree.join("b"), content(100_002)).unwrap();
    // The old blob looks used more recently than anything the import
    // writes: only keeping the directory's own first file makes the
    // second one drop the old blob rather than the first file.
    let meta = OpenOptions::new()
        .append(true)
        .open(dir.join("s").join(format!("{old_id}.meta")))
        .unwrap();
    let later = meta.metadata().unwrap().modified().unwrap() + std::time::Duration::from_secs(86_400);
    meta.set_modified(later).unwrap();
    let quota = store.usage().unwrap() + 150_000;
    let mut room = Room::new(quota, NOTHING_GIVEN_UP);
    let (listing, files) = store
        .import_dir(&tree, Import::Copy, Some(&mut room), &AtomicU64::new(0), None)
        .unwrap();
    assert_eq!(room.dropped(), &[old_id]);
    assert!(files.iter().all(|f| store.contains(&f.id)) && store.contains(&listing.id));
    assert!(store.usage().unwrap() <= quota);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_download_resumes_from_its_saved_bitmap() {
    let dir = temp("resume");
    let bytes = content(40 * GROUP_BYTES as usize + 3);
    std::fs::write(dir.join("file"), &bytes).unwrap();
    let a = BlobStore::open(&dir.join("a")).unwrap();
    let info = a.import(&dir.join("file"), Import::Copy).unwrap();
    let b = BlobStore::open(&dir.join("b")).unwrap();
    {
        let partial = b.partial(info).unwrap();
        let mut fetch = FetchPlan::new(info.size, None);
        fetch.add_provider(0);
        let range = 0..16;
        let mut wire = Vec::new();
        a.encode(&info.id, &range, &mut wire).unwrap();
        partial
            .receive(&range, wire.as_slice(), |g| {
                fetch.verified(0, g);
            })
            .unwrap();
        partial.save_have(fetch.have()).unwrap();
        // Dropped here: the process "dies".
    }
    let partial = b.partial(info).unwrap();
    let mut fetch = FetchPlan::new(info.size, partial.saved_have());
    assert_eq!(fetch.verified_bytes(), 16 * GROUP_BYTES);
    assert_eq!(pull(&a, info, &partial, &mut fetch), 41 - 16);
    let done = partial.finish(None).unwrap();
    assert_eq!(done, info);
    assert!(b.contains(&info.id));
    // Parents saved before the crash and after it make a whole outboard.
    assert_eq!(
        std::fs::read(dir.join("b").join(format!("{}.obao", info.id))).unwrap(),
        std::fs::read(dir.join("a").join(format!("{}.obao", info.id))).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_quota_drops_the_least_recently_used_and_refuses_what_cannot_fit() {
    let dir = temp("quota");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let mut ids = Vec::new();
    for n in 0..3u8 {
        let path = dir.join(format!("f{n}"));
        std::fs::write(&path, content(100_000 + usize::from(n))).unwrap();
        ids.push(store.import(&path, Import::Copy).unwrap().id);
    }
    used_in_order(&dir.join("s"), &ids);
    let used = store.usage().unwrap();
    assert!(used > 300_000);
    // Room for 50 kB within the current use plus 10 kB: the oldest goes.
    let dropped = store.make_room(50_000, used + 10_000, &[], NOTHING_GIVEN_UP).unwrap();
    assert_eq!(dropped, vec![ids[0]]);
    assert!(!store.contains(&ids[0]) && store.contains(&ids[1]));
    // Kept blobs are never dropped; what cannot fit is refused clearly.
    let error = store
        .make_room(10_000_000, used, &[ids[1], ids[2]], NOTHING_GIVEN_UP)
        .unwrap_err();
    assert!(matches!(error, StoreError::QuotaExceeded { .. }), "{error}");
    assert!(store.contains(&ids[1]) && store.contains(&ids[2]));
    // Marked pinned blobs are listed, and only they.
    assert!(store.pinned().unwrap().is_empty());
    store.set_pinned(&ids[2], true).unwrap();
    assert_eq!(store.pinned().unwrap(), vec![ids[2]]);
    store.set_pinned(&ids[2], false).unwrap();
    assert!(store.pinned().unwrap().is_empty());
    // What could fit counts only the pinned blobs as staying.
    let used = store.usage().unwrap();
    assert!(
        store.could_fit(150_000, used, NOTHING_GIVEN_UP).unwrap(),
        "both blobs could go"
    );
    store.set_pinned(&ids[1], true).unwrap();
    assert!(
        store.could_fit(90_000, used, NOTHING_GIVEN_UP).unwrap(),
        "the unpinned one could go"
    );
    assert!(
        !store.could_fit(150_000, used, NOTHING_GIVEN_UP).unwrap(),
        "the pinned one stays"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_download_that_cannot_fit_on_the_disk_is_refused_before_it_takes_room() {
    let dir = temp("diskfull");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    // A size a ticket or a peer may claim: far past any disk.
    let info = BlobInfo {
        id: Key::of_content(b"huge"),
        size: 1 << 62,
    };
    let error = store.partial(info).map(drop).unwrap_err();
    assert!(
        matches!(error, StoreError::DiskFull { need, .. } if need >= 1 << 62),
        "{error}"
    );
    assert!(error.to_string().starts_with("disk full: "), "{error}");
    assert!(!store.part_path(&info.id).exists(), "nothing left behind");
    // A size that fits still starts.
    let small = BlobInfo {
        id: Key::of_content(b"small"),
        size: 100_000,
    };
    assert!(store.partial(small).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_metadata_file_hides_its_own_blob_only() {
    let dir = temp("badmeta");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let mut ids = Vec::new();
    for n in 0..3u8 {
        let path = dir.join(format!("f{n}"));
        std::fs::write(&path, content(10_000 + usize::from(n))).unwrap();
        ids.push(store.import(&path, Import::Copy).unwrap().id);
    }
    std::fs::write(dir.join("s").join(format!("{}.meta", ids[1])), b"\xff\x00 not cbor").unwrap();
    let listed: Vec<Key> = store.list().unwrap().iter().map(|e| e.info.id).collect();
    let mut expected = vec![ids[0], ids[2]];
    expected.sort();
    assert_eq!(listed, expected);
    let error = store.size(&ids[1]).unwrap_err().to_string();
    assert!(error.contains("bad metadata"), "{error}");
    // The quota still collects around it.
    assert!(store.make_room(0, u64::MAX, &[], NOTHING_GIVEN_UP).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pinned_blob_is_copied_out_not_moved() {
    let dir = temp("moveout");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let path = dir.join("file");
    std::fs::write(&path, content(30_000)).unwrap();
    let info = store.import(&path, Import::Copy).unwrap();
    store.set_pinned(&info.id, true).unwrap();
    store.move_out(&info.id, &dir.join("out")).unwrap();
    assert_eq!(std::fs::read(dir.join("out")).unwrap(), content(30_000));
    // The store keeps its own copy: the user's file is theirs to change.
    std::fs::write(dir.join("out"), b"edited").unwrap();
    let mut wire = Vec::new();
    store.encode(&info.id, &(0..2), &mut wire).unwrap();
    assert_eq!(verify_range(info, &(0..2), wire.as_slice()).unwrap(), 30_000);
    // An unpinned one is moved, and served from where it went.
    store.set_pinned(&info.id, false).unwrap();
    store.move_out(&info.id, &dir.join("moved")).unwrap();
    assert!(!dir.join("s").join(format!("{}.data", info.id)).exists());
    assert_eq!(
        store.list().unwrap()[0].in_place.as_deref(),
        Some(std::fs::canonicalize(dir.join("moved")).unwrap().as_path())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn downloads_given_up_a_day_ago_and_dead_imports_do_not_keep_their_room() {
    let dir = temp("abandoned");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let old = BlobInfo {
        id: Key::of_content(b"old"),
        size: 200_000,
    };
    let fresh = BlobInfo {
        id: Key::of_content(b"fresh"),
        size: 200_000,
    };
    for info in [old, fresh] {
        let partial = store.partial(info).unwrap();
        partial.save_have(&[0; 1]).unwrap();
    }
    // The clock is the file system's: when the partial files were made.
    let now = std::fs::metadata(store.part_path(&fresh.id))
        .unwrap()
        .modified()
        .unwrap();
    let two_days_ago = now - 2 * ABANDONED_AFTER;
    for ext in PARTIAL_FILES {
        let file = OpenOptions::new().append(true).open(store.path(&old.id, ext)).unwrap();
        file.set_modified(two_days_ago).unwrap();
    }
    let listed: Vec<Key> = store.partials().unwrap().into_iter().map(|p| p.1).collect();
    assert_eq!(listed.len(), 2);
    let used = store.usage().unwrap();
    let dropped = store.make_room(100_000, used, &[], now).unwrap();
    assert_eq!(dropped, vec![old.id], "only the download given up goes");
    assert!(!store.part_path(&old.id).exists() && store.part_path(&fresh.id).exists());
    assert!(PARTIAL_FILES.iter().all(|ext| !store.path(&old.id, ext).exists()));

    // An import killed mid-way left its temporary file: the next open of
    // the store removes it; a live process's is left alone.
    let dead = dir.join("s").join("import-4000000000-0.data.tmp");
    let live = dir.join("s").join(format!("import-{}-9.data.tmp", std::process::id()));
    std::fs::write(&dead, b"half a file").unwrap();
    std::fs::write(&live, b"being written").unwrap();
    BlobStore::open(&dir.join("s")).unwrap();
    assert!(!dead.exists() && live.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_shared_again_takes_its_unchanged_known_files_as_they_were() {
    // Files under the prefix that are the same file are not imported
    // again; one replaced is, and one outside the prefix always is.
    let dir = temp("reuse");
    let store = BlobStore::open(&dir.join("s")).unwrap();
    let tree = dir.join("t");
    std::fs::create_dir_all(tree.join("snap/memory")).unwrap();
    std::fs::write(tree.join("snap/memory/a"), content(5000)).unwrap();
    std::fs::write(tree.join("snap/memory/b"), content(7000)).unwrap();
    std::fs::write(tree.join("state"), b"one").unwrap();
    let mut reuse = super::Reuse::under("snap/memory");
    let import = |reuse: &mut super::Reuse| {
        store
            .import_dir(&tree, Import::Copy, None, &AtomicU64::new(0), Some(reuse))
            .unwrap()
    };
    let (first, _) = import(&mut reuse);
    assert_eq!(reuse.counts, (2, 0));
    let (again, _) = import(&mut reuse);
    assert_eq!((reuse.counts, again), ((0, 2), first));
    // Replaced by a new file with other bytes: imported, and named anew.
    std::fs::write(tree.join("new"), content(6000)).unwrap();
    std::fs::rename(tree.join("new"), tree.join("snap/memory/b")).unwrap();
    let (changed, files) = import(&mut reuse);
    assert_eq!(reuse.counts, (1, 1));
    assert_ne!(changed, first);
    assert!(files.iter().any(|f| f.size == 6000));
    std::fs::remove_dir_all(&dir).unwrap();
}
