//! Sharing and getting files between real peers: several providers,
//! corrupted and lying ones, quotas, files shared in place, directories.

use std::sync::Arc;
use std::time::Duration;

use shoal::node::files::Progress;
use shoal::node::{Client, NodeConfig, start};
use shoal::overlay::Key;
use shoal::resources::store::Import;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_on_two_peers_is_fetched_from_both_and_verified() {
    let peers = swarm("fetch", 4).await;
    let bytes = content(5 * 1024 * 1024 + 123, 1);
    let source = data_dir_existing("fetch", 0).join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let (info, ticket) = peers[0].files().share(source.clone(), Import::Copy).await.unwrap();
    assert_eq!(info.id, Key::of_content(&bytes));
    peers[1].files().share(source.clone(), Import::InPlace).await.unwrap();
    // Found through the overlay alone: no ticket.
    let progress = Arc::new(Progress::default());
    let got = peers[3]
        .files()
        .download(info.id, None, progress.clone(), None)
        .await
        .unwrap();
    assert_eq!(got, info);
    assert_eq!(std::fs::read(stored("fetch", 3, &info.id)).unwrap(), bytes);
    assert_eq!(progress.verified.load(std::sync::atomic::Ordering::Relaxed), info.size);
    let delivered = progress.delivered.lock().unwrap().clone();
    for provider in [&peers[0], &peers[1]] {
        let bytes = delivered
            .iter()
            .find(|(p, _)| *p == provider.peer_id())
            .map_or(0, |(_, b)| *b);
        assert!(bytes > 0, "both providers carried part of the file: {delivered:?}");
    }
    // The fetching peer now provides it too.
    let providers = peers[2].get_providers(info.id).await.unwrap();
    assert!(
        providers.iter().any(|p| p.addr.peer == peers[3].peer_id()),
        "{providers:?}"
    );
    // A ticket alone is enough, and it parses from its text.
    let ticket = shoal::resources::Ticket::parse(&ticket.to_text()).unwrap();
    let got = peers[2]
        .files()
        .download(info.id, Some(ticket), Arc::new(Progress::default()), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(stored("fetch", 2, &got.id)).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_a_corrupted_copy_is_dropped_and_the_file_still_arrives() {
    let peers = swarm("corrupt", 3).await;
    let bytes = content(3 * 1024 * 1024, 2);
    let source = data_dir_existing("corrupt", 0).join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let (info, _) = peers[0].files().share(source.clone(), Import::Copy).await.unwrap();
    peers[1].files().share(source.clone(), Import::Copy).await.unwrap();
    // Peer 1's copy rots on disk: every 64 KiB, one byte flips.
    let path = stored("corrupt", 1, &info.id);
    let mut rotten = std::fs::read(&path).unwrap();
    for i in (0..rotten.len()).step_by(64 * 1024) {
        rotten[i] ^= 0xff;
    }
    std::fs::write(&path, rotten).unwrap();
    let progress = Arc::new(Progress::default());
    let got = peers[2]
        .files()
        .download(info.id, None, progress.clone(), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(stored("corrupt", 2, &got.id)).unwrap(), bytes);
    // The rotten provider was asked (3 runs of 1 MiB go to the first 3 of
    // the 4 streams, 2 a provider) and dropped for bad data; what it
    // delivered before its first flipped byte and what the good one
    // delivered make up the file.
    let dropped = progress.dropped.lock().unwrap().clone();
    assert_eq!(dropped, vec![(peers[1].peer_id(), shoal::resources::Failure::BadData)]);
    let delivered = progress.delivered.lock().unwrap().clone();
    let of = |peer: &Client| {
        delivered
            .iter()
            .find(|(p, _)| *p == peer.peer_id())
            .map_or(0, |(_, b)| *b)
    };
    assert_eq!(of(&peers[0]) + of(&peers[1]), info.size, "{delivered:?}");
    assert!(of(&peers[1]) < info.size / 2, "{delivered:?}");

    // With only the rotten copy left, the download fails and says why.
    let only_bad = swarm("corrupt-only", 2).await;
    let lone = data_dir_existing("corrupt-only", 0).join("source.bin");
    std::fs::write(&lone, &bytes).unwrap();
    only_bad[0].files().share(lone, Import::Copy).await.unwrap();
    let path = stored("corrupt-only", 0, &info.id);
    let mut rotten = std::fs::read(&path).unwrap();
    rotten[100] ^= 1;
    std::fs::write(&path, rotten).unwrap();
    let error = only_bad[1]
        .files()
        .download(info.id, None, Arc::new(Progress::default()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("1 sent bad data"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_directory_arrives_as_the_same_tree() {
    let peers = swarm("dir", 2).await;
    let root = data_dir_existing("dir", 0).join("tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let files = [
        ("a.txt", content(10, 3)),
        ("empty", Vec::new()),
        ("sub/b.bin", content(200_000, 4)),
        ("sub/deeper/c.bin", content(70_000, 5)),
        ("sub/same-as-a.txt", content(10, 3)),
    ];
    for (path, bytes) in &files {
        std::fs::write(root.join(path), bytes).unwrap();
    }
    let (listing, ticket) = peers[0].files().share(root.clone(), Import::Copy).await.unwrap();
    let out = data_dir_existing("dir", 1).join("got");
    let progress = Arc::new(Progress::default());
    let got = peers[1]
        .files()
        .download(listing.id, Some(ticket), progress.clone(), Some(out.clone()))
        .await
        .unwrap();
    assert_eq!(got.id, listing.id);
    for (path, bytes) in &files {
        assert_eq!(&std::fs::read(out.join(path)).unwrap(), bytes, "{path}");
    }
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + listing.size;
    assert_eq!(progress.size.load(std::sync::atomic::Ordering::Relaxed), total);
    // A single file by id still lands as a file.
    let single = peers[1]
        .files()
        .download(
            Key::of_content(&files[2].1),
            None,
            Arc::new(Progress::default()),
            Some(out.join("copy.bin")),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("copy.bin")).unwrap(), files[2].1);
    assert_eq!(single.size, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_drops_old_blobs_for_new_ones_and_refuses_what_cannot_fit() {
    let (peers, small) = with_quota_peer("quota", 3 * 1024 * 1024).await;
    let mut ids = Vec::new();
    for n in 0..3u8 {
        let path = data_dir_existing("quota", 0).join(format!("f{n}"));
        std::fs::write(&path, content(2 * 1024 * 1024, 10 + n)).unwrap();
        let (info, ticket) = peers[0].files().share(path, Import::Copy).await.unwrap();
        ids.push(info.id);
        small
            .files()
            .download(info.id, Some(ticket), Arc::new(Progress::default()), None)
            .await
            .unwrap();
    }
    // 3 MiB hold one 2 MiB blob: each download dropped the one before,
    // and stopped announcing it.
    assert!(small.files().store().contains(&ids[2]));
    assert!(!small.files().store().contains(&ids[0]) && !small.files().store().contains(&ids[1]));
    let providing = small.providing().await.unwrap();
    assert!(providing.contains(&ids[2]), "{providing:?}");
    assert!(
        !providing.contains(&ids[0]) && !providing.contains(&ids[1]),
        "{providing:?}"
    );
    assert!(small.files().store().usage().unwrap() <= 3 * 1024 * 1024);
    let big = data_dir_existing("quota", 0).join("big");
    std::fs::write(&big, content(4 * 1024 * 1024, 20)).unwrap();
    let (info, ticket) = peers[0].files().share(big, Import::Copy).await.unwrap();
    let error = small
        .files()
        .download(info.id, Some(ticket), Arc::new(Progress::default()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("quota exceeded"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_under_a_quota_drops_the_oldest_for_a_new_file_and_nothing_for_one_held() {
    let (_swarm, node) = with_quota_peer("reshare", 5 * 1024 * 1024).await;
    let mut paths = Vec::new();
    for n in 0..3u8 {
        let path = data_dir_existing("reshare", 0).join(format!("f{n}"));
        std::fs::write(&path, content(2 * 1024 * 1024, 30 + n)).unwrap();
        paths.push(path);
    }
    let a = node.files().share(paths[0].clone(), Import::Copy).await.unwrap().0.id;
    let b = node.files().share(paths[1].clone(), Import::Copy).await.unwrap().0.id;
    // 4 of 5 MiB used. Sharing b again needs no room: a stays.
    assert_eq!(
        node.files().share(paths[1].clone(), Import::Copy).await.unwrap().0.id,
        b
    );
    assert!(node.files().store().contains(&a) && node.files().store().contains(&b));
    // A third file does need room: the least recently used (a) goes, and is
    // no longer announced.
    let c = node.files().share(paths[2].clone(), Import::Copy).await.unwrap().0.id;
    assert!(!node.files().store().contains(&a));
    assert!(node.files().store().contains(&b) && node.files().store().contains(&c));
    assert!(node.files().store().usage().unwrap() <= 5 * 1024 * 1024);
    let providing = node.providing().await.unwrap();
    assert!(!providing.contains(&a) && providing.contains(&c), "{providing:?}");
    // What could not fit even with everything unpinned dropped is refused
    // before it is copied, and drops nothing.
    let big = data_dir_existing("reshare", 0).join("big");
    std::fs::write(&big, content(6 * 1024 * 1024, 40)).unwrap();
    let error = node.files().share(big, Import::Copy).await.unwrap_err().to_string();
    assert!(error.contains("quota exceeded"), "{error}");
    assert!(node.files().store().contains(&b) && node.files().store().contains(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_in_place_that_changes_is_no_longer_announced_and_get_says_why() {
    let peers = swarm("changed", 1).await;
    let _ = std::fs::remove_dir_all(data_dir_existing("changed", 1));
    let bootstrap = peers[0].ready().await.unwrap();
    let config = || {
        let mut config = NodeConfig::new(data_dir_existing("changed", 1));
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.bootstrap = bootstrap.clone();
        config.pin_check = Duration::from_millis(100);
        config
    };
    let node = start(config()).await.unwrap();
    let path = data_dir_existing("changed", 0).join("in-place");
    std::fs::write(&path, content(100_000, 50)).unwrap();
    let (info, _) = node.files().share(path.clone(), Import::InPlace).await.unwrap();
    assert!(node.providing().await.unwrap().contains(&info.id));
    // Past the first round of duties (which checks at once): the periodic
    // check must find it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&path, content(100_001, 50)).unwrap();
    until("a blob whose file changed is no longer announced", || async {
        !node.providing().await.unwrap().contains(&info.id)
    })
    .await;
    // No other peer has it: get says what happened to this peer's copy.
    let error = node
        .files()
        .download(info.id, None, Arc::new(Progress::default()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("changed or went away"), "{error}");
    // Restarted with its data directory, the peer announces again what it
    // holds, but not the blob whose file changed.
    let other = data_dir_existing("changed", 0).join("copied");
    std::fs::write(&other, content(50_000, 51)).unwrap();
    let (other, _) = node.files().share(other, Import::Copy).await.unwrap();
    node.leave().await.unwrap();
    drop(node);
    let node = start(config()).await.unwrap();
    until("the restarted peer announces what it holds", || async {
        node.providing().await.unwrap().contains(&other.id)
    })
    .await;
    let providing = node.providing().await.unwrap();
    assert!(!providing.contains(&info.id), "{providing:?}");
    // The file put back as it was, it is served and announced again.
    std::fs::write(&path, content(100_000, 50)).unwrap();
    let (again, _) = node.files().share(path, Import::InPlace).await.unwrap();
    assert_eq!(again.id, info.id);
    assert!(node.providing().await.unwrap().contains(&info.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_a_blob_already_held_to_a_path_copies_it_and_the_store_keeps_its_own() {
    let peers = swarm("held", 1).await;
    let path = data_dir_existing("held", 0).join("shared");
    std::fs::write(&path, content(300_000, 7)).unwrap();
    let (info, _) = peers[0].files().share(path, Import::Copy).await.unwrap();
    let out = data_dir_existing("held", 0).join("out");
    peers[0]
        .files()
        .download(info.id, None, Arc::new(Progress::default()), Some(out.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content(300_000, 7));
    // The user's file is theirs to change: the store still serves its copy.
    std::fs::write(&out, b"edited").unwrap();
    assert!(stored("held", 0, &info.id).exists());
    let entry = peers[0].files().store().list().unwrap();
    assert_eq!(entry.len(), 1);
    assert_eq!(entry[0].in_place, None);
    assert_eq!(std::fs::read(stored("held", 0, &info.id)).unwrap(), content(300_000, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloads_of_one_blob_at_once_both_end_with_the_file() {
    let peers = swarm("twice", 2).await;
    let path = data_dir_existing("twice", 0).join("shared");
    std::fs::write(&path, content(8 * 1024 * 1024, 9)).unwrap();
    let (info, ticket) = peers[0].files().share(path, Import::Copy).await.unwrap();
    let out = |n: u8| data_dir_existing("twice", 1).join(format!("out{n}"));
    // Both start before either ends: they write the same download, and
    // the one that files it second must find the blob already there.
    let (a, b) = tokio::join!(
        peers[1].files().download(
            info.id,
            Some(ticket.clone()),
            Arc::new(Progress::default()),
            Some(out(1))
        ),
        peers[1]
            .files()
            .download(info.id, Some(ticket), Arc::new(Progress::default()), Some(out(2))),
    );
    a.unwrap();
    b.unwrap();
    for n in [1, 2] {
        assert_eq!(std::fs::read(out(n)).unwrap(), content(8 * 1024 * 1024, 9), "out{n}");
    }
    assert!(peers[1].files().store().contains(&info.id));
    // One download: the provider sent the file once (with its hashes and
    // the size proof, well under twice).
    let served = peers[0].files().served_bytes();
    assert!(
        served >= info.size && served < info.size + info.size / 8,
        "served {served} bytes of a {} byte file",
        info.size
    );
}

/// `ticket` with its size replaced by `size`, through its text as a user
/// would paste it.
fn forged(ticket: &shoal::resources::Ticket, size: u64) -> shoal::resources::Ticket {
    let mut forged = ticket.clone();
    forged.blob.size = size;
    shoal::resources::Ticket::parse(&forged.to_text()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_that_lies_about_the_size_gets_the_true_file_and_poisons_nothing() {
    let peers = swarm("forged", 3).await;
    let bytes = content(300_000, 60);
    let source = data_dir_existing("forged", 0).join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let (info, ticket) = peers[0].files().share(source, Import::Copy).await.unwrap();
    let size = info.size;
    for claimed in [0, 1, size - 1, size + 1, size + 16 * 1024, 10 * size, u64::MAX / 2] {
        let out = data_dir_existing("forged", 1).join(format!("out-{claimed}"));
        let progress = Arc::new(Progress::default());
        let got = peers[1]
            .files()
            .download(
                info.id,
                Some(forged(&ticket, claimed)),
                progress.clone(),
                Some(out.clone()),
            )
            .await
            .unwrap();
        assert_eq!(got, info, "claimed {claimed}");
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "claimed {claimed}");
        assert_eq!(peers[1].files().store().size(&info.id).unwrap(), Some(size));
        assert_eq!(progress.size.load(std::sync::atomic::Ordering::Relaxed), size);
        // Fetch it afresh for the next claim.
        peers[1].files().store().remove(&info.id).unwrap();
    }
    // A size nobody can prove writes nothing anywhere: an id nobody holds,
    // "of 0 bytes", with a ticket naming a peer.
    let nobody = Key::of_content(b"held by no peer");
    let mut lie = forged(&ticket, 0);
    lie.blob.id = nobody;
    let out = data_dir_existing("forged", 2).join("nothing");
    let error = peers[2]
        .files()
        .download(nobody, Some(lie), Arc::new(Progress::default()), Some(out.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("could prove its size"), "{error}");
    assert!(!out.exists());
    assert!(!peers[2].files().store().contains(&nobody));
    assert!(!peers[2].providing().await.unwrap().contains(&nobody));
    assert!(peers[2].files().store().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_size_makes_no_room_under_a_quota() {
    let (peers, small) = with_quota_peer("claim-room", 10 * 1024 * 1024).await;
    let mut held = Vec::new();
    for n in 0..3u8 {
        let path = data_dir_existing("claim-room", 1).join(format!("kept{n}"));
        std::fs::write(&path, content(2 * 1024 * 1024, 70 + n)).unwrap();
        held.push(small.files().share(path, Import::Copy).await.unwrap().0.id);
    }
    let path = data_dir_existing("claim-room", 0).join("one-mib");
    std::fs::write(&path, content(1024 * 1024, 80)).unwrap();
    let (info, ticket) = peers[0].files().share(path, Import::Copy).await.unwrap();
    // 9.5 MiB claimed: room for that would drop all three.
    let got = small
        .files()
        .download(
            info.id,
            Some(forged(&ticket, 9 * 1024 * 1024 + 512 * 1024)),
            Arc::new(Progress::default()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(got, info);
    let providing = small.providing().await.unwrap();
    for id in &held {
        assert!(
            small.files().store().contains(id),
            "a blob was dropped for a claimed size"
        );
        assert!(providing.contains(id), "{providing:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_notices_its_in_place_file_edited_behind_its_back_and_stops_serving_it() {
    use std::io::{Seek, Write};
    let peers = swarm("edited", 2).await;
    let path = data_dir_existing("edited", 0).join("in-place.bin");
    let bytes = content(1024 * 1024, 90);
    std::fs::write(&path, &bytes).unwrap();
    let (info, _) = peers[0].files().share(path.clone(), Import::InPlace).await.unwrap();
    // One byte changed, with the length and mtime put back: the metadata
    // cannot tell.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(std::io::SeekFrom::Start(500_000)).unwrap();
    file.write_all(&[bytes[500_000] ^ 0xff]).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    assert!(
        peers[0].files().store().contains(&info.id),
        "length and mtime alone cannot tell"
    );
    let error = peers[1]
        .files()
        .download(info.id, None, Arc::new(Progress::default()), None)
        .await
        .unwrap_err()
        .to_string();
    // The provider caught it itself: it is not blamed for bad data.
    assert!(error.contains("(0 sent bad data"), "{error}");
    assert!(!peers[1].files().store().contains(&info.id));
    // It no longer counts the blob held, says why, and stops announcing it.
    assert!(!peers[0].files().store().contains(&info.id));
    assert_eq!(
        peers[0].files().store().changed_source(&info.id),
        Some(path.canonicalize().unwrap())
    );
    until("a blob found not to match is no longer announced", || async {
        !peers[0].providing().await.unwrap().contains(&info.id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_regular_files_and_directories_are_shared() {
    let peers = swarm("special", 1).await;
    let fifo = data_dir_existing("special", 0).join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Opening a FIFO waits for a writer: the share must not.
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        peers[0].files().share(fifo.clone(), Import::Copy),
    )
    .await
    .expect("sharing a FIFO returned instead of waiting for a writer")
    .unwrap_err()
    .to_string();
    assert!(error.contains("not a regular file"), "{error}");
    // A /proc file says it has 0 bytes and reads as more.
    let error = peers[0]
        .files()
        .share("/proc/self/status".into(), Import::Copy)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("only files with a fixed size"), "{error}");
    assert!(peers[0].files().store().list().unwrap().is_empty());
}

/// A node on a runtime of its own, in a thread of its own, that can be
/// frozen: its sockets stay open and nothing answers on them, as with a
/// peer across a partition.
struct Freezable {
    client: Client,
    toggle: std::sync::mpsc::Sender<()>,
    frozen: std::sync::mpsc::Receiver<()>,
}

impl Freezable {
    /// Freezes a running node, or thaws a frozen one; returns once a
    /// freeze has taken hold.
    fn toggle(&self, freeze: bool) {
        self.toggle.send(()).unwrap();
        if freeze {
            self.frozen.recv().unwrap();
        }
    }
}

fn freezable(config: NodeConfig) -> Freezable {
    let (started, client) = std::sync::mpsc::channel();
    let (toggle, toggled) = std::sync::mpsc::channel::<()>();
    let (took_hold, frozen) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            started.send(start(config).await.unwrap()).unwrap();
            // Frozen, this thread blocks, and the runtime with it, until
            // thawed (or for good once the handle is gone).
            loop {
                match toggled.try_recv() {
                    Ok(()) if took_hold.send(()).is_ok() && toggled.recv().is_ok() => {}
                    Ok(()) | Err(std::sync::mpsc::TryRecvError::Disconnected) => loop {
                        std::thread::park();
                    },
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    });
    Freezable {
        client: client.recv().unwrap(),
        toggle,
        frozen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_starts_from_the_provider_that_answers_not_after_one_across_a_partition() {
    let tag = "partition";
    let mut overlay = shoal::overlay::Config::new(shoal::node::identity::verifier());
    overlay.request_timeout = Duration::from_millis(500);
    let config = |i: usize, bootstrap: Vec<shoal::node::Multiaddr>| {
        let mut config = NodeConfig::new(data_dir(tag, i));
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.overlay = Some(overlay.clone());
        config.bootstrap = bootstrap;
        config
    };
    let fetcher = start(config(0, Vec::new())).await.unwrap();
    let bootstrap = fetcher.ready().await.unwrap();
    let providers = [freezable(config(1, bootstrap.clone())), freezable(config(2, bootstrap))];
    let path = data_dir_existing(tag, 1).join("shared");
    std::fs::write(&path, content(200_000, 91)).unwrap();
    let mut info = None;
    for p in &providers {
        info = Some(p.client.files().share(path.clone(), Import::Copy).await.unwrap().0);
    }
    let info = info.unwrap();
    until("both providers are found", || async {
        fetcher.get_providers(info.id).await.unwrap().len() == 2
    })
    .await;
    // Each provider frozen in turn: in one of the two rounds, a downloader
    // that asks one provider at a time asks the frozen one first.
    for cut in &providers {
        cut.toggle(true);
        // Waited for, the frozen one would hold the download up for 10 s
        // (a probe's timeout; 30 s, a stream's opening timeout, before
        // probes); asked beside the other, it holds up nothing, and the
        // download takes a fraction of a second. The deadline is just under
        // that timeout.
        let got = tokio::time::timeout(
            Duration::from_secs(9),
            fetcher
                .files()
                .download(info.id, None, Arc::new(Progress::default()), None),
        )
        .await
        .expect("the download waited for the provider across the partition")
        .unwrap();
        assert_eq!(got, info);
        cut.toggle(false);
        fetcher.files().store().remove(&info.id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_four_imports_run_at_once_and_the_rest_wait_their_turn() {
    const FILES: usize = 6;
    const SIZE: u64 = 256 << 20;
    let peers = swarm("imports", 1).await;
    let node = peers[0].clone();
    // Sparse files: each takes a while to read and hash, and no disk.
    let mut shares = Vec::new();
    for i in 0..FILES {
        let path = data_dir_existing("imports", 0).join(format!("big-{i}"));
        let mut file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut file, format!("file {i}").as_bytes()).unwrap();
        file.set_len(SIZE).unwrap();
        let progress = Arc::new(Progress::default());
        let node = node.clone();
        let counted = progress.clone();
        let task = tokio::spawn(async move { node.files().share_counted(path, Import::InPlace, counted).await });
        shares.push((progress, task));
    }
    // An import is running once it has read something and until it ends.
    let mut most = 0;
    while shares.iter().any(|(_, task)| !task.is_finished()) {
        let running = shares
            .iter()
            .filter(|(p, task)| p.verified.load(std::sync::atomic::Ordering::Relaxed) > 0 && !task.is_finished())
            .count();
        most = most.max(running);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for (_, task) in shares {
        let (info, _) = task.await.unwrap().unwrap();
        assert_eq!(info.size, SIZE);
    }
    assert!(most <= 4, "{most} imports ran at once");
    assert_eq!(most, 4, "four imports ran side by side");
}
