//! Real peers on loopback: several nodes in one process, joined through one
//! bootstrap peer over TCP and QUIC, with mDNS off (it would multicast out of
//! the machine's real interface).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shoal::node::admission::SwarmKey;
use shoal::node::{Client, NodeConfig, start};
use shoal::overlay::Key;

const PEERS: usize = 10;

fn data_dir(test: &str, i: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-loopback-{}-{test}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The listen addresses of `client`, once its transports are up.
async fn listening_addrs(client: &Client) -> Vec<shoal::node::Multiaddr> {
    client.ready().await.unwrap()
}

/// Waits until `condition` holds, polling; panics naming `what` after a
/// minute (generous: these tests share two cores with other tests).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The routing table of `client` once it holds someone.
async fn peers_soon(client: &Client) -> Vec<shoal::overlay::PeerInfo<shoal::node::NodeAddr>> {
    eventually("the table holds someone", || async {
        !client.peers().await.unwrap().is_empty()
    })
    .await;
    client.peers().await.unwrap()
}

async fn swarm(test: &str) -> Vec<Client> {
    private_swarm(test, PEERS, None).await
}

/// `n` peers joined through the first, bootstrapping alternately over TCP
/// and QUIC; admitting only holders of `key` when one is given.
async fn private_swarm(test: &str, n: usize, key: Option<SwarmKey>) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..n {
        let mut config = NodeConfig::new(data_dir(test, i));
        config.mdns = false;
        config.swarm_key = key.clone();
        config.listen = vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ];
        if let Some(first) = clients.first() {
            let addrs = listening_addrs(first).await;
            // Alternate the transport the joiners bootstrap over.
            let quic = i % 2 == 0;
            let pick = addrs
                .iter()
                .find(|a| a.to_string().contains("quic") == quic)
                .unwrap()
                .clone();
            config.bootstrap = vec![pick];
        }
        clients.push(start(config).await.unwrap());
    }
    eventually("every table knows most of the swarm", || async {
        for client in &clients {
            if client.peers().await.unwrap().len() < n / 2 {
                return false;
            }
        }
        true
    })
    .await;
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_form_one_overlay_and_lookups_find_the_true_closest() {
    let clients = swarm("lookup").await;
    let mut sizes = Vec::new();
    for client in &clients {
        sizes.push(client.peers().await.unwrap().len());
    }
    assert!(
        sizes.iter().all(|s| *s >= PEERS / 2),
        "every peer joined: table sizes {sizes:?}"
    );
    for (n, origin) in clients.iter().enumerate() {
        let target = Key::of_content(format!("target {n}").as_bytes());
        let mut others: Vec<Key> = clients.iter().map(Client::key).filter(|k| *k != origin.key()).collect();
        others.sort_by_key(|k| k.distance(&target));
        let lookup = tokio::time::timeout(Duration::from_secs(20), origin.find_node(target))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lookup.peers.first().map(|p| p.key), Some(others[0]), "lookup {n}");
        assert!(lookup.peers.iter().all(|p| p.addr.peer != origin.peer_id()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_and_provider_records_put_on_one_peer_are_read_on_another() {
    let clients = swarm("record").await;
    let key = Key::of_name("test", b"greeting");
    let stored = clients[1].put_value(key, b"hello from peer 1".to_vec()).await.unwrap();
    assert_eq!(stored, 3, "the whole home confirmed");
    for reader in [&clients[5], &clients[7]] {
        let record = reader.get_value(key).await.unwrap().expect("found");
        assert_eq!(record.value, b"hello from peer 1");
    }
    // Provider records: a batch of keys announced on one peer, each found
    // from elsewhere.
    let keys: Vec<Key> = (0..200u32).map(|n| Key::of_name("test", &n.to_be_bytes())).collect();
    let provided = clients[2].provide(keys.clone()).await.unwrap();
    assert_eq!((provided.keys, provided.unconfirmed), (200, 0), "{provided:?}");
    assert_eq!(provided.stored_everywhere, 200, "{provided:?}");
    for key in [keys[0], keys[77], keys[199]] {
        let found = clients[8].get_providers(key).await.unwrap();
        assert_eq!(
            found.iter().map(|p| p.addr.peer).collect::<Vec<_>>(),
            vec![clients[2].peer_id()]
        );
    }
    assert!(
        clients[8]
            .get_providers(Key::of_name("test", b"nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        clients[3]
            .get_value(Key::of_name("test", b"nothing"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_rejoins_through_the_peers_it_remembers() {
    let mut config = NodeConfig::new(data_dir("remember", 0));
    config.mdns = false;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let first = start(config).await.unwrap();
    let addrs = listening_addrs(&first).await;
    let second_dir = data_dir("remember", 1);
    let mut config = NodeConfig::new(second_dir.clone());
    config.mdns = false;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = addrs;
    let second = start(config.clone()).await.unwrap();
    assert_eq!(peers_soon(&second).await.len(), 1);
    second.leave().await.unwrap();
    // Restart with no bootstrap address: the remembered peer is enough.
    config.bootstrap = Vec::new();
    let again = start(config).await.unwrap();
    let peers = peers_soon(&again).await;
    assert_eq!(
        peers.iter().map(|p| p.addr.peer).collect::<Vec<_>>(),
        vec![first.peer_id()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outlive_their_crashed_home_through_repair() {
    // Short intervals so that a repair round fits in a test.
    let mut overlay = shoal::overlay::Config::new(shoal::node::identity::verifier());
    overlay.request_timeout = Duration::from_millis(500);
    overlay.maintenance_interval = Duration::from_millis(500);
    overlay.replicate_interval = Duration::from_secs(1);
    let mut clients: Vec<Option<Client>> = Vec::new();
    for i in 0..12 {
        let mut config = NodeConfig::new(data_dir("repair", i));
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.overlay = Some(overlay.clone());
        if let Some(Some(first)) = clients.first() {
            let addrs = listening_addrs(first).await;
            config.bootstrap = addrs;
        }
        clients.push(Some(start(config).await.unwrap()));
    }
    // Every table holds most of the swarm before the put (a table need not
    // hold everyone: a peer learns others only as lookups bring them), so
    // that the put's lookup reaches the true home.
    let all: Vec<&Client> = clients.iter().flatten().collect();
    eventually("every table holds most of the swarm", || async {
        for c in &all {
            if c.peers().await.unwrap().len() < all.len() / 2 {
                return false;
            }
        }
        true
    })
    .await;
    // A key whose home does not include the writer, so that only the home
    // members (and the repairs among them) hold the record.
    let keys: Vec<Key> = clients.iter().map(|c| c.as_ref().unwrap().key()).collect();
    let key = (0u32..)
        .map(|n| Key::of_name("test", format!("durable {n}").as_bytes()))
        .find(|k| {
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_by_key(|i| keys[*i].distance(k));
            !order[..6].contains(&0)
        })
        .unwrap();
    let writer = clients[0].as_ref().unwrap().clone();
    assert_eq!(writer.put_value(key, b"still here".to_vec()).await.unwrap(), 3);
    // The home: the three peers closest to the key (the writer may be one).
    let mut by_distance: Vec<usize> = (1..clients.len()).collect();
    by_distance.sort_by_key(|i| clients[*i].as_ref().unwrap().key().distance(&key));
    // The record is the only one in the swarm: a peer holds it when it
    // holds any record.
    let holds = |i: usize| {
        let client = clients[i].clone().unwrap();
        async move { client.records_held().await.unwrap() == 1 }
    };
    for &i in &by_distance[..3] {
        eventually("the home holds the record", || holds(i)).await;
    }
    assert!(!holds(by_distance[3]).await, "only the home holds it");
    // Crash two home members (dropping every handle stops a node at once,
    // with no hand-off), wait until replication has repaired the home (the
    // next two closest hold it), then crash the third.
    for i in &by_distance[..2] {
        clients[*i] = None;
    }
    for &i in &by_distance[3..5] {
        let client = clients[i].clone().unwrap();
        eventually("the repaired home holds the record", || async {
            client.records_held().await.unwrap() == 1
        })
        .await;
    }
    clients[by_distance[2]] = None;
    // A reader outside every home the record had asks for it.
    let reader = clients[by_distance[8]].as_ref().unwrap();
    assert_eq!(reader.records_held().await.unwrap(), 0, "the reader holds no copy");
    let record = tokio::time::timeout(Duration::from_secs(20), reader.get_value(key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.expect("the repaired home still holds the record").value,
        b"still here"
    );
}

fn swarm_key(test: &str, name: &str) -> SwarmKey {
    let path = std::env::temp_dir().join(format!("shoal-loopback-{}-{test}-{name}.key", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let key = SwarmKey::create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_swarm_refuses_peers_without_its_key_on_tcp_and_quic() {
    let key = swarm_key("private", "members");
    let members = private_swarm("private", 4, Some(key)).await;
    let member_addrs = listening_addrs(&members[1]).await;
    // Outsiders: no key, and another swarm's key; each tries TCP and QUIC.
    let other = swarm_key("private", "other");
    let mut outsiders = Vec::new();
    for (i, (outsider_key, quic)) in [
        (None, false),
        (None, true),
        (Some(other.clone()), false),
        (Some(other), true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut config = NodeConfig::new(data_dir("private-outsider", i));
        config.mdns = false;
        config.listen = vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ];
        config.swarm_key = outsider_key;
        let pick = member_addrs
            .iter()
            .find(|a| a.to_string().contains("quic") == quic)
            .unwrap()
            .clone();
        config.bootstrap = vec![pick];
        outsiders.push(start(config).await.unwrap());
    }
    // Each outsider dialed the member it was given and was refused there,
    // over the transport it used: the member names each in its refusals.
    let transports = [false, true, false, true];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let refusals = members[1].refusals().await.unwrap();
        let refused = |outsider: &Client, quic: bool| {
            refusals.iter().any(|r| {
                r.reason.contains(&outsider.peer_id().to_string()) && r.from.to_string().contains("/quic") == quic
            })
        };
        if outsiders.iter().zip(transports).all(|(o, quic)| refused(o, quic)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every outsider was refused: {refusals:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then try from inside as well: a member looking up an outsider's key
    // never reaches it either.
    let outsider_ids: Vec<_> = outsiders.iter().map(Client::peer_id).collect();
    for (n, member) in members.iter().enumerate() {
        let lookup = member.find_node(outsiders[n].key()).await.unwrap();
        assert!(lookup.peers.iter().all(|p| !outsider_ids.contains(&p.addr.peer)));
        let table = member.peers().await.unwrap();
        assert!(table.len() >= 2, "member {n} still sees the swarm: {}", table.len());
        assert!(
            table.iter().all(|p| !outsider_ids.contains(&p.addr.peer)),
            "an outsider entered the table of member {n}"
        );
    }
    for (n, outsider) in outsiders.iter().enumerate() {
        assert!(outsider.peers().await.unwrap().is_empty(), "outsider {n} got in");
    }
    // The same members admit each other: a record still crosses the swarm.
    let record = Key::of_name("test", b"private");
    assert_eq!(members[0].put_value(record, b"members only".to_vec()).await.unwrap(), 3);
    assert_eq!(
        members[3].get_value(record).await.unwrap().unwrap().value,
        b"members only"
    );
    assert!(outsiders[0].get_value(record).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_still_holds_the_records_it_kept_for_others() {
    let mut config = NodeConfig::new(data_dir("keep", 0));
    config.mdns = false;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let writer = start(config).await.unwrap();
    let keeper_dir = data_dir("keep", 1);
    let mut config = NodeConfig::new(keeper_dir.clone());
    config.mdns = false;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = listening_addrs(&writer).await;
    let keeper = start(config.clone()).await.unwrap();
    assert_eq!(peers_soon(&keeper).await.len(), 1);
    let key = Key::of_name("test", b"kept");
    assert_eq!(
        writer.put_value(key, b"kept across restarts".to_vec()).await.unwrap(),
        2
    );
    writer.provide(vec![key]).await.unwrap();
    assert_eq!(keeper.records_held().await.unwrap(), 2);
    // Both stop; the keeper comes back alone and still serves the records.
    keeper.leave().await.unwrap();
    drop(writer);
    config.bootstrap = Vec::new();
    let again = start(config).await.unwrap();
    assert_eq!(again.records_held().await.unwrap(), 2);
    let record = again.get_value(key).await.unwrap().expect("restored");
    assert_eq!(record.value, b"kept across restarts");
    assert_eq!(again.get_providers(key).await.unwrap().len(), 1);
}

/// One peer on loopback TCP, mDNS off, with `caps` if given.
fn lone_config(test: &str, i: usize, caps: Option<shoal::node::limits::ConnectionCaps>) -> NodeConfig {
    let mut config = NodeConfig::new(data_dir(test, i));
    config.mdns = false;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.caps = caps;
    config
}

/// The TCP port of `client`'s first listen address.
async fn tcp_port(client: &Client) -> u16 {
    let addrs = listening_addrs(client).await;
    addrs[0]
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_data_directory_runs_one_node_at_a_time() {
    let dir = data_dir("lock", 0);
    let config = || {
        let mut config = NodeConfig::new(dir.clone());
        config.mdns = false;
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config
    };
    let first = start(config()).await.unwrap();
    let error = start(config()).await.unwrap_err();
    assert!(matches!(error, shoal::node::NodeError::DataDirInUse(_)), "{error}");
    assert!(error.to_string().contains("already running"), "{error}");
    // Free again once the first has stopped.
    first.leave().await.unwrap();
    let again = start(config()).await.unwrap();
    assert_eq!(again.peer_id(), first.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_port_another_peer_listens_on_is_refused() {
    let first = start(lone_config("port", 0, None)).await.unwrap();
    let port = tcp_port(&first).await;
    let mut config = lone_config("port", 1, None);
    config.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    match start(config).await {
        Err(shoal::node::NodeError::Listen { reason, .. }) => assert!(reason.contains("in use"), "{reason}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second peer listens on port {port} beside the first"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_peers_are_told_this_runs_shoal_and_its_version() {
    use futures::StreamExt;
    use libp2p::{identify, noise, swarm::SwarmEvent, tcp, yamux};
    let node = start(lone_config("agent", 0, None)).await.unwrap();
    let addr = listening_addrs(&node).await[0].clone();
    let mut asker = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| identify::Behaviour::new(identify::Config::new("/asker/1".into(), key.public())))
        .unwrap()
        .build();
    asker.dial(addr).unwrap();
    let agent = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let SwarmEvent::Behaviour(identify::Event::Received { info, .. }) = asker.select_next_some().await {
                return info.agent_version;
            }
        }
    })
    .await
    .expect("identify answered");
    assert_eq!(agent, format!("shoal/{}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_inbound_connections_are_capped_and_dropped_and_the_peer_goes_on() {
    let caps = shoal::node::limits::ConnectionCaps {
        pending_incoming: 4,
        established_incoming: 16,
        per_ip: 8,
    };
    let node = start(lone_config("idle", 0, Some(caps))).await.unwrap();
    // The soft open-file limit was raised to the hard one.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(files[3], files[4], "soft and hard open-file limits: {limits}");
    let port = tcp_port(&node).await;
    // Connections that never begin a handshake: those over the cap are
    // closed at once, the rest when their handshake times out.
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let idle: Vec<std::net::TcpStream> = (0..20)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        for (i, mut socket) in idle.into_iter().enumerate() {
            socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            match socket.read(&mut [0u8; 1]) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Ok(_) => panic!("idle connection {i} was sent data"),
                Err(e) => panic!("idle connection {i} was kept open ({e})"),
            }
        }
    })
    .await
    .unwrap();
    // And the peer still takes real ones.
    let mut config = lone_config("idle", 1, None);
    config.bootstrap = listening_addrs(&node).await;
    let other = start(config).await.unwrap();
    eventually("a real peer joined after the idle ones were dropped", || async {
        !node.peers().await.unwrap().is_empty() && !other.peers().await.unwrap().is_empty()
    })
    .await;
}
