//! What the files tests share: swarms of real peers on loopback, content,
//! waiting on conditions.

use std::time::{Duration, Instant};

use shoal::node::{Client, NodeConfig, start};
use shoal::overlay::Key;

pub(crate) fn data_dir(test: &str, i: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-files-{}-{test}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub(crate) async fn swarm(test: &str, n: usize) -> Vec<Client> {
    swarm_with(test, n, |_, _, _| {}).await
}

/// A swarm of `n` peers on loopback, each configured by `configure(i,
/// config, peers started so far)` before it starts.
pub(crate) async fn swarm_with(
    test: &str,
    n: usize,
    configure: impl Fn(usize, &mut NodeConfig, &[Client]),
) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..n {
        let mut config = NodeConfig::new(data_dir(test, i));
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        if let Some(first) = clients.first() {
            config.bootstrap = first.ready().await.unwrap();
        }
        configure(i, &mut config, &clients);
        clients.push(start(config).await.unwrap());
    }
    tables_hold_everyone(&clients.iter().collect::<Vec<_>>()).await;
    clients
}

/// Waits until every peer's table holds every other peer. A table learns of
/// a peer only through traffic, and a newcomer's join lookup can miss a peer
/// whose answer timed out on a loaded machine: a peer still missing another
/// looks it up, as it would before using it.
pub(crate) async fn tables_hold_everyone(peers: &[&Client]) {
    until("every table holds every peer", || async {
        let mut everyone = true;
        for p in peers {
            let table = p.peers().await.unwrap();
            let missing = peers
                .iter()
                .find(|q| q.peer_id() != p.peer_id() && !table.iter().any(|e| e.addr.peer == q.peer_id()));
            if let Some(q) = missing {
                everyone = false;
                let _ = p.find_node(q.key()).await;
            }
        }
        everyone
    })
    .await;
}

/// A one-peer swarm and a second peer, joined to it, whose store has `quota`.
pub(crate) async fn with_quota_peer(test: &str, quota: u64) -> (Vec<Client>, Client) {
    let peers = swarm(test, 1).await;
    let mut config = NodeConfig::new(data_dir(test, 1));
    config.mdns = false;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = peers[0].ready().await.unwrap();
    config.quota = Some(quota);
    (peers, start(config).await.unwrap())
}

pub(crate) fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u64::from(seed) + 1;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

pub(crate) fn stored(test: &str, i: usize, id: &Key) -> std::path::PathBuf {
    data_dir_existing(test, i).join("blobs").join(format!("{id}.data"))
}

pub(crate) fn data_dir_existing(test: &str, i: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shoal-files-{}-{test}-{i}", std::process::id()))
}

/// How long a test waits for a condition before it fails: generous, as
/// these tests share two cores with the rest of the suite.
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);

/// Whether `done` holds within [`PATIENCE`], checked every 100 ms.
pub(crate) async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the async `condition` holds; fails naming `what` after
/// [`PATIENCE`].
pub(crate) async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
