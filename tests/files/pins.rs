//! Pins between real peers: the home keeps its copies through crashes,
//! leaves, declines and edits.

use std::sync::Arc;
use std::time::Duration;

use shoal::node::files::Progress;
use shoal::node::{Client, NodeConfig, start};
use shoal::overlay::Key;
use shoal::resources::BlobInfo;
use shoal::resources::store::Import;

use crate::common::*;

/// `n` peers with short overlay and pin-duty intervals; peer 0 shares (as
/// `import` says) and pins (3 replicas) `bytes` from its data directory's
/// `source.bin`; returns once the blob's home holds it.
async fn pinned_swarm(tag: &str, n: usize, bytes: &[u8], import: Import) -> (Vec<Option<Client>>, BlobInfo) {
    let mut overlay = shoal::overlay::Config::new(shoal::node::identity::verifier());
    overlay.request_timeout = Duration::from_millis(500);
    overlay.maintenance_interval = Duration::from_millis(500);
    overlay.replicate_interval = Duration::from_secs(1);
    let mut peers: Vec<Option<Client>> = Vec::new();
    for i in 0..n {
        let mut config = NodeConfig::new(data_dir(tag, i));
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.overlay = Some(overlay.clone());
        config.pin_check = Duration::from_millis(300);
        if let Some(Some(first)) = peers.first() {
            config.bootstrap = first.ready().await.unwrap();
        }
        peers.push(Some(start(config).await.unwrap()));
    }
    tables_hold_everyone(&peers.iter().flatten().collect::<Vec<_>>()).await;
    let source = data_dir_existing(tag, 0).join("source.bin");
    std::fs::write(&source, bytes).unwrap();
    let owner = peers[0].as_ref().unwrap().clone();
    let (info, _) = owner.files().share(source, import).await.unwrap();
    assert!(
        owner.pins().pin(info.id, 9).await.is_err(),
        "more replicas than homes hold records"
    );
    assert!(owner.pins().pin(info.id, 3).await.unwrap() >= 2);
    drop(owner);
    // Fetched and marked pinned (the mark follows the download's end).
    let held = eventually(|| {
        let mut live: Vec<&Client> = peers.iter().flatten().collect();
        live.sort_by_key(|c| c.key().distance(&info.id));
        live.iter().take(3).all(|c| c.files().store().is_pinned(&info.id))
    })
    .await;
    assert!(held, "the home fetched its copies");
    (peers, info)
}

/// Whether each of the 3 live peers closest to `id` holds it.
fn home(peers: &[Option<Client>], id: &shoal::overlay::Key) -> Vec<bool> {
    let mut live: Vec<&Client> = peers.iter().flatten().collect();
    live.sort_by_key(|c| c.key().distance(id));
    live.into_iter()
        .take(3)
        .map(|c| c.files().store().contains(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_peer_that_pinned_a_blob_can_change_its_pin_and_others_are_told_so() {
    let (peers, info) = pinned_swarm("conflict", 4, &content(100_000, 5), Import::Copy).await;
    let other = peers[2].as_ref().unwrap();
    for attempt in [other.pins().pin(info.id, 2).await, other.pins().unpin(info.id).await] {
        let error = attempt.unwrap_err().to_string();
        assert!(error.contains("is pinned by another peer"), "{error}");
    }
    // The pinner itself still can.
    assert!(peers[0].as_ref().unwrap().pins().unpin(info.id).await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_home_member_hands_its_copy_on_first() {
    let bytes = content(1024 * 1024 + 3, 31);
    let (mut peers, info) = pinned_swarm("handoff", 7, &bytes, Import::Copy).await;
    let mut by_distance: Vec<usize> = (0..peers.len()).collect();
    by_distance.sort_by_key(|i| peers[*i].as_ref().unwrap().key().distance(&info.id));
    if by_distance[3] == 0 {
        // The sharer keeps its own copy; outside the home, it just goes.
        peers[0] = None;
        by_distance.remove(3);
    }
    let (leaver, successor) = (by_distance[0], by_distance[3]);
    let successor = peers[successor].clone().unwrap();
    assert!(
        !successor.files().store().contains(&info.id),
        "the 4th closest keeps no copy yet"
    );
    let handed = peers[leaver].take().unwrap().leave().await.unwrap();
    // The copy moved before the leaver was gone, not by a later repair.
    assert_eq!(handed.taken, 1, "{handed:?}");
    assert!(successor.files().store().contains(&info.id));
    assert_eq!(home(&peers, &info.id), vec![true; 3]);
    // Once the leaver's records arrive it keeps the copy for the home.
    let kept = eventually(|| successor.files().store().is_pinned(&info.id)).await;
    assert!(kept, "the new member keeps its copy pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_file_survives_its_provider_and_a_home_member_crashing() {
    let bytes = content(1024 * 1024 + 7, 30);
    let (mut peers, info) = pinned_swarm("pin", 7, &bytes, Import::Copy).await;

    // Crash the original provider and one home member that is not it.
    let mut by_distance: Vec<usize> = (1..peers.len()).collect();
    by_distance.sort_by_key(|i| peers[*i].as_ref().unwrap().key().distance(&info.id));
    peers[0] = None;
    peers[by_distance[0]] = None;
    let repaired = eventually(|| home(&peers, &info.id).iter().all(|h| *h)).await;
    if !repaired {
        let mut live: Vec<&Client> = peers.iter().flatten().collect();
        live.sort_by_key(|c| c.key().distance(&info.id));
        for c in live {
            eprintln!(
                "peer {}: holds {} pinned {} pins {:?} table {}",
                c.key().short(),
                c.files().store().contains(&info.id),
                c.files().store().is_pinned(&info.id),
                c.pins().list().await.unwrap(),
                c.peers().await.unwrap().len()
            );
        }
    }
    assert!(repaired, "a new member joined the home and fetched the file");
    // And the file is still fetchable, whole, elsewhere.
    let reader = peers
        .iter()
        .flatten()
        .max_by_key(|c| c.key().distance(&info.id))
        .unwrap();
    let got = reader
        .files()
        .download(info.id, None, Arc::new(Progress::default()), None)
        .await
        .unwrap();
    assert_eq!(got.size, info.size);
}

/// Six peers with short overlay and pin-duty intervals (and `republish`, if
/// given); the one nearest `near` other than peer 0 (which shares) is
/// restarted with a store of `quota` bytes. Returns once every table holds
/// every peer, with the small peer's index.
async fn swarm_with_a_small_peer(
    tag: &str,
    near: &Key,
    quota: u64,
    republish: Option<Duration>,
) -> (Vec<Client>, usize) {
    let mut overlay = shoal::overlay::Config::new(shoal::node::identity::verifier());
    overlay.request_timeout = Duration::from_millis(500);
    overlay.maintenance_interval = Duration::from_millis(500);
    overlay.replicate_interval = Duration::from_secs(1);
    if let Some(republish) = republish {
        overlay.republish_interval = republish;
    }
    let config = |i: usize, bootstrap: Vec<shoal::node::Multiaddr>, quota: Option<u64>| {
        let mut config = NodeConfig::new(data_dir_existing(tag, i));
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.overlay = Some(overlay.clone());
        config.pin_check = Duration::from_millis(300);
        config.bootstrap = bootstrap;
        config.quota = quota;
        config
    };
    let mut peers: Vec<Client> = Vec::new();
    for i in 0..6 {
        let _ = std::fs::remove_dir_all(data_dir_existing(tag, i));
        let bootstrap = match peers.first() {
            Some(first) => first.ready().await.unwrap(),
            None => Vec::new(),
        };
        peers.push(start(config(i, bootstrap, None)).await.unwrap());
    }
    let small = (1..6).min_by_key(|i| peers[*i].key().distance(near)).unwrap();
    let first = peers[0].clone();
    let old = std::mem::replace(&mut peers[small], first);
    old.leave().await.unwrap();
    drop(old);
    let bootstrap = peers[0].ready().await.unwrap();
    peers[small] = start(config(small, bootstrap, Some(quota))).await.unwrap();
    tables_hold_everyone(&peers.iter().collect::<Vec<_>>()).await;
    (peers, small)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_member_without_room_steps_aside_and_the_next_peer_keeps_the_copy() {
    let tag = "decline";
    let bytes = content(1024 * 1024 + 11, 32);
    let id = Key::of_content(&bytes);
    // The peer nearest the file (not the one sharing it) has less room than
    // the file.
    let (peers, small) = swarm_with_a_small_peer(tag, &id, 512 * 1024, None).await;

    let source = data_dir_existing(tag, 0).join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let (info, _) = peers[0].files().share(source, Import::Copy).await.unwrap();
    assert_eq!(info.id, id);
    assert!(peers[0].pins().pin(id, 3).await.unwrap() >= 2);
    // The home by room: the three nearest but the peer without room.
    let mut others: Vec<usize> = (0..6).filter(|i| *i != small).collect();
    others.sort_by_key(|i| peers[*i].key().distance(&id));
    let home: Vec<usize> = others[..3].to_vec();
    let kept = eventually(|| home.iter().all(|i| peers[*i].files().store().is_pinned(&id))).await;
    let declining = peers[small]
        .pins()
        .list()
        .await
        .unwrap()
        .iter()
        .any(|p| p.id == id && p.declining);
    if !kept {
        for (i, c) in peers.iter().enumerate() {
            eprintln!(
                "peer {i}: holds {} pinned {} pins {:?}",
                c.files().store().contains(&id),
                c.files().store().is_pinned(&id),
                c.pins().list().await.unwrap()
            );
        }
    }
    assert!(kept, "the three nearest peers with room keep the file");
    assert!(declining, "the peer without room declines it");
    assert!(!peers[small].files().store().contains(&id));
    // Asked for providers, nobody lists the peer that declined.
    let providers = peers[others[4]].get_providers(id).await.unwrap();
    assert!(
        providers.iter().all(|p| p.addr.peer != peers[small].peer_id()),
        "{providers:?}"
    );
}

/// The decline life cycle: a home member without room declines; once room
/// frees up (the file it kept is unpinned) it stops declining, its decline
/// record lapses at the home (at twice the republish interval: 6 s here),
/// the home counts it in again, and it fetches and keeps the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_declined_for_lack_of_room_keeps_the_copy_once_it_has_room() {
    let tag = "undecline";
    let later = content(1024 * 1024 + 13, 40);
    let later_id = Key::of_content(&later);
    // The peer nearest the later file has room for one such file; declines
    // lapse after 6 s.
    let republish = Some(Duration::from_secs(3));
    let (peers, small) = swarm_with_a_small_peer(tag, &later_id, 1536 * 1024, republish).await;
    // A first file whose home holds the small peer too (one seed in two).
    let in_home = |id: &Key| {
        let mut order: Vec<usize> = (0..6).collect();
        order.sort_by_key(|i| peers[*i].key().distance(id));
        order[..3].contains(&small)
    };
    let first = (41..=u8::MAX)
        .map(|seed| content(1024 * 1024 + 17, seed))
        .find(|bytes| in_home(&Key::of_content(bytes)))
        .unwrap();
    let share = |name: &str, bytes: &[u8]| {
        let source = data_dir_existing(tag, 0).join(name);
        std::fs::write(&source, bytes).unwrap();
        peers[0].files().share(source, Import::Copy)
    };
    let (first, _) = share("first.bin", &first).await.unwrap();
    assert!(peers[0].pins().pin(first.id, 3).await.unwrap() >= 2);
    let small_peer = peers[small].clone();
    let kept = eventually(|| small_peer.files().store().is_pinned(&first.id)).await;
    assert!(kept, "the small peer keeps the first file for its home");

    // The later file does not fit beside it: the small peer declines it.
    let (info, _) = share("later.bin", &later).await.unwrap();
    assert!(peers[0].pins().pin(info.id, 3).await.unwrap() >= 2);
    until("the small peer declines the later file", || async {
        small_peer.declining().await.unwrap().contains(&info.id)
    })
    .await;
    assert!(!small_peer.files().store().contains(&info.id));

    // Unpinned, the first file may be dropped: the later one would fit, so
    // the small peer stops declining it, the decline lapses, and it fetches
    // and keeps its copy.
    assert!(peers[0].pins().unpin(first.id).await.unwrap() > 0);
    until("the small peer stops declining", || async {
        !small_peer.declining().await.unwrap().contains(&info.id)
    })
    .await;
    let took = eventually(|| small_peer.files().store().is_pinned(&info.id)).await;
    if !took {
        for (i, c) in peers.iter().enumerate() {
            eprintln!(
                "peer {i}: holds {} pinned {} pins {:?} decliners {:?}",
                c.files().store().contains(&info.id),
                c.files().store().is_pinned(&info.id),
                c.pins().list().await.unwrap(),
                c.decliners(info.id).await.unwrap()
            );
        }
    }
    assert!(took, "the peer with room again keeps the copy for the home");
    // No home member still counts it out.
    until("the decline lapsed everywhere", || async {
        for p in &peers {
            if p.decliners(info.id).await.unwrap().contains(&small_peer.key()) {
                return false;
            }
        }
        true
    })
    .await;
}

/// A home member whose copy is a file shared in place that was then edited
/// holds no servable copy any more: its pin duty fetches the blob into its
/// store (verified, from the rest of the home) and keeps that, leaving the
/// edited file as the user left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_member_whose_in_place_copy_was_edited_fetches_the_blob_again() {
    let tag = "refetch";
    let bytes = content(1024 * 1024 + 5, 33);
    // Three peers, three replicas: the sharer is a home member.
    let (peers, info) = pinned_swarm(tag, 3, &bytes, Import::InPlace).await;
    let owner = peers[0].as_ref().unwrap().clone();
    let source = data_dir_existing(tag, 0).join("source.bin");
    assert!(!stored(tag, 0, &info.id).exists(), "served in place, not copied");
    let edited = content(bytes.len(), 34);
    std::fs::write(&source, &edited).unwrap();
    until("the owner holds a store copy again", || async {
        stored(tag, 0, &info.id).exists()
            && owner.files().store().contains(&info.id)
            && owner.files().store().is_pinned(&info.id)
    })
    .await;
    assert_eq!(
        std::fs::read(stored(tag, 0, &info.id)).unwrap(),
        bytes,
        "the store copy is the blob"
    );
    assert_eq!(
        std::fs::read(&source).unwrap(),
        edited,
        "the user's file is left as edited"
    );
}
