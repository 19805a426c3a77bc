//! A virtual-time harness that drives a handful of overlay cores against each
//! other, the way quinn-proto's `Pair` drives two endpoints: messages are
//! delivered after a fixed latency, timers fire when virtual time reaches
//! them, and `drive` fails loudly on livelock. Records are signed with real
//! ed25519 keys.

// Harness code outside #[test] functions unwraps too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

// The harness itself, beside this file (a test crate's modules live
// next to its root, so the path is given).
#[path = "harness/pair.rs"]
mod pair;

use std::collections::BTreeSet;
use std::time::Duration;

use pair::*;
use shoal_overlay::{Event, Key, Mode, PeerInfo, Request, Response};

#[test]
fn lookups_find_the_true_closest_peer() {
    let mut swarm = Swarm::join(40);
    for n in 0..20u8 {
        let from = u32::from(n) % 40;
        let key = target(n);
        let now = swarm.now;
        let query = swarm.peers[from as usize].find_node(now, key).unwrap();
        swarm.flush(from);
        let event = swarm.await_event(|e| matches!(e, Event::FoundNodes { query: q, .. } if *q == query));
        let Event::FoundNodes { peers, stats, .. } = event else {
            unreachable!()
        };
        let truth = swarm.true_closest(&key, from);
        assert_eq!(peers.first().map(|p| p.addr), Some(truth[0]), "lookup {n} from {from}");
        assert_eq!(peers.len(), 20);
        assert!(stats.requests >= 20 && stats.responses >= 20);
    }
    for peer in &swarm.peers {
        peer.check_invariants().unwrap();
    }
}

#[test]
fn value_put_on_one_peer_is_read_on_another_and_lives_at_its_home() {
    let mut swarm = Swarm::join(30);
    let key = target(1);
    assert_eq!(put(&mut swarm, 3, key, b"hello"), 3);
    let home: Vec<u32> = swarm.true_closest(&key, u32::MAX)[..3].to_vec();
    assert_eq!(swarm.holders(&key), {
        let mut h = home.clone();
        h.sort();
        h
    });
    let record = get(&mut swarm, 17, key).expect("record found");
    assert_eq!(record.value, b"hello");
    // A newer put by the same publisher replaces it.
    swarm.run_for(Duration::from_secs(1));
    put(&mut swarm, 3, key, b"again");
    assert_eq!(get(&mut swarm, 22, key).unwrap().value, b"again");
}

#[test]
fn forged_and_tampered_records_are_refused() {
    let mut swarm = Swarm::join(10);
    let key = target(2);
    put(&mut swarm, 1, key, b"genuine");
    let holder = swarm.holders(&key)[0];
    let mut forged = swarm.peers[holder as usize]
        .record_store()
        .value(&key, swarm.now)
        .unwrap()
        .clone();
    forged.value = b"forged".to_vec();
    forged.seq += 1;
    let sender = swarm.info(5);
    let now = swarm.now;
    let response =
        swarm.peers[holder as usize].handle_request(now, sender, Mode::Server, Request::PutValue { record: forged });
    assert!(
        matches!(
            response,
            Response::Rejected(shoal_overlay::RecordError::BadSignature { .. })
        ),
        "{response:?}"
    );
    // Another publisher cannot take over the key while the record lives.
    let stolen = put(&mut swarm, 7, key, b"mine now");
    assert_eq!(stolen, 0, "no home member accepts another publisher's record");
    assert_eq!(get(&mut swarm, 8, key).unwrap().value, b"genuine");

    // A copy of a record held is taken without a second check of its
    // signature (replication sends each one again every round), but only
    // a byte-for-byte copy, and only while it lives.
    let genuine = swarm.peers[holder as usize]
        .record_store()
        .value(&key, swarm.now)
        .unwrap()
        .clone();
    let mut resigned = genuine.clone();
    resigned.signature[0] ^= 1;
    let (now, five) = (swarm.now, swarm.info(5));
    let expired_at = genuine.expires + Duration::from_secs(1);
    let peer = &mut swarm.peers[holder as usize];
    let put_value = |record| Request::PutValue { record };
    let copy = peer.handle_request(now, five.clone(), Mode::Server, put_value(genuine.clone()));
    assert!(matches!(copy, Response::Stored), "{copy:?}");
    let bad = peer.handle_request(now, five.clone(), Mode::Server, put_value(resigned));
    assert!(
        matches!(bad, Response::Rejected(shoal_overlay::RecordError::BadSignature { .. })),
        "{bad:?}"
    );
    let late = peer.handle_request(expired_at, five, Mode::Server, put_value(genuine));
    assert!(
        matches!(late, Response::Rejected(shoal_overlay::RecordError::Expired { .. })),
        "{late:?}"
    );
}

#[test]
fn providers_are_found_from_elsewhere() {
    let mut swarm = Swarm::join(25);
    let key = target(3);
    swarm.until_put(4, |core, now| core.start_providing(now, key).unwrap());
    let now = swarm.now;
    let query = swarm.peers[20].get_providers(now, key).unwrap();
    swarm.flush(20);
    let event = swarm.await_event(|e| matches!(e, Event::GotProviders { query: q, .. } if *q == query));
    let Event::GotProviders { providers, .. } = event else {
        unreachable!()
    };
    assert_eq!(providers.iter().map(|p| p.provider.addr).collect::<Vec<_>>(), vec![4]);
}

#[test]
fn crashed_home_members_are_replaced_by_replication() {
    let mut swarm = Swarm::join(30);
    let key = target(4);
    put(&mut swarm, 0, key, b"durable");
    let home = swarm.true_closest(&key, u32::MAX);
    // Two of the three home members crash (no graceful hand-off).
    swarm.down.insert(home[0]);
    swarm.down.insert(home[1]);
    // Lookups touch the dead peers, replication rounds repair the home.
    let replicate = swarm.config.replicate_interval;
    for round in 0..4u8 {
        let from = 10 + u32::from(round);
        if !swarm.down.contains(&from) {
            let _ = get(&mut swarm, from, key);
        }
        swarm.run_for(replicate);
    }
    let new_home: BTreeSet<u32> = swarm.true_closest(&key, u32::MAX)[..3].iter().copied().collect();
    let holders: BTreeSet<u32> = swarm.holders(&key).into_iter().collect();
    assert!(
        new_home.is_subset(&holders),
        "home {new_home:?} should hold the record, holders {holders:?}"
    );
    assert_eq!(get(&mut swarm, 25, key).unwrap().value, b"durable");
}

#[test]
fn a_leaving_home_member_hands_its_records_on() {
    let mut swarm = Swarm::join(20);
    let key = target(5);
    put(&mut swarm, 2, key, b"handed");
    let home = swarm.true_closest(&key, u32::MAX);
    let leaver = home[0];
    let now = swarm.now;
    let query = swarm.peers[leaver as usize].leave(now);
    swarm.flush(leaver);
    let event = swarm.await_event(|e| matches!(e, Event::Left { query: q, .. } if *q == query));
    let Event::Left { handed_off, .. } = event else {
        unreachable!()
    };
    assert!(handed_off >= 2, "handed off {handed_off}");
    swarm.down.insert(leaver);
    let fourth = home[3];
    assert!(
        swarm.holders(&key).contains(&fourth),
        "the next-closest peer took the record over"
    );
}

#[test]
fn a_restarted_peer_with_many_records_hands_them_on_without_a_storm() {
    // Five peers, each holding the same 400 records (a restarted peer
    // restores them from disk); receivers drop requests past 100 open from
    // one sender, as libp2p does. Sent all at once, the hand-offs overran
    // that, every drop made a peer stale, and every stale peer sent all of
    // its records again, for as long as the run lasted.
    let mut swarm = Swarm::join(5);
    swarm.capacity = Some(100);
    let records = many_records(&swarm, 400);
    for peer in 0..5 {
        let now = swarm.now;
        assert_eq!(swarm.peers[peer].restore_records(now, records.clone(), Vec::new()), 400);
    }
    // Peer 4 crashes; the others notice on their next probes.
    swarm.down.insert(4);
    swarm.run_for(Duration::from_secs(120));
    // It comes back with its records.
    swarm.down.remove(&4);
    swarm.peers[4] = swarm.core(4, Mode::Server);
    let now = swarm.now;
    assert_eq!(swarm.peers[4].restore_records(now, records.clone(), Vec::new()), 400);
    let seed = swarm.info(0);
    swarm.peers[4].bootstrap(now, vec![seed]).unwrap();
    swarm.flush(4);
    let before: u64 = swarm.sent.iter().sum();
    swarm.run_for(Duration::from_secs(600));
    let sent = swarm.sent.iter().sum::<u64>() - before;
    assert_eq!(
        swarm.dropped, 0,
        "requests dropped at capacity ({sent} sent in 10 minutes)"
    );
    // The hand-offs and two replication rounds: about 5,300 here, where
    // the storm sent 148,000.
    assert!(sent < 8_000, "{sent} requests in 10 minutes");
    homes_hold(&swarm, &records, u32::MAX);
    for peer in &swarm.peers {
        peer.check_invariants().unwrap();
    }
}

#[test]
fn a_leaving_peer_with_many_records_hands_every_one_on() {
    // 400 records at a peer that leaves, receivers that drop requests past
    // 100 open from one sender: sent all at once, most hand-offs were
    // dropped and failed.
    let mut swarm = Swarm::join(5);
    swarm.capacity = Some(100);
    let records = many_records(&swarm, 400);
    let now = swarm.now;
    assert_eq!(swarm.peers[4].restore_records(now, records.clone(), Vec::new()), 400);
    let query = swarm.peers[4].leave(now);
    swarm.flush(4);
    let event = swarm.await_event(|e| matches!(e, Event::Left { query: q, .. } if *q == query));
    let Event::Left { handed_off, failed, .. } = event else {
        unreachable!()
    };
    assert_eq!((failed, swarm.dropped), (0, 0), "handed off {handed_off}");
    assert_eq!(handed_off, 400 * 3);
    swarm.down.insert(4);
    homes_hold(&swarm, &records, 4);
}

#[test]
fn clients_never_enter_routing_tables() {
    let mut swarm = Swarm::join(12);
    let client = swarm.spawn(Mode::Client);
    let now = swarm.now;
    let seed = swarm.info(0);
    swarm.peers[client as usize].bootstrap(now, vec![seed]).unwrap();
    swarm.flush(client);
    swarm.drive_until(100_000, |s| {
        s.events
            .iter()
            .any(|(i, e)| *i == client && matches!(e, Event::Bootstrapped { .. }))
    });
    let client_key = swarm.info(client).key;
    assert!(
        swarm.peers[client as usize].routing_table().len() > 5,
        "the client learned the overlay"
    );
    for (i, peer) in swarm.peers.iter().enumerate() {
        if i as u32 != client {
            assert!(!peer.routing_table().contains(&client_key), "peer {i} holds the client");
        }
    }
}

#[test]
fn two_puts_in_one_microsecond_keep_their_order() {
    let mut swarm = Swarm::join(8);
    let key = target(6);
    let now = swarm.now;
    swarm.peers[1].put_value(now, key, b"first".to_vec()).unwrap();
    swarm.peers[1].put_value(now, key, b"second".to_vec()).unwrap();
    swarm.flush(1);
    swarm.run_for(Duration::from_secs(1));
    assert_eq!(get(&mut swarm, 5, key).unwrap().value, b"second");
}

#[test]
fn a_lone_peer_reads_its_own_record() {
    let mut swarm = Swarm::join(1);
    let key = target(7);
    assert_eq!(put(&mut swarm, 0, key, b"mine"), 1, "the only peer is the whole home");
    assert_eq!(get(&mut swarm, 0, key).unwrap().value, b"mine");
}

#[test]
fn a_leaving_peer_refuses_new_records() {
    let mut swarm = Swarm::join(6);
    let key = target(8);
    put(&mut swarm, 1, key, b"before");
    let holder = swarm.holders(&key)[0];
    let record = swarm.peers[holder as usize]
        .record_store()
        .value(&key, swarm.now)
        .unwrap()
        .clone();
    let now = swarm.now;
    let first = swarm.peers[holder as usize].leave(now);
    assert_eq!(
        swarm.peers[holder as usize].leave(now),
        first,
        "leaving twice is one leave"
    );
    let sender = swarm.info(1);
    let response = swarm.peers[holder as usize].handle_request(now, sender, Mode::Server, Request::PutValue { record });
    assert!(
        matches!(response, Response::Rejected(shoal_overlay::RecordError::Leaving { .. })),
        "{response:?}"
    );
}

#[test]
fn a_request_timeout_below_the_minimum_stall_is_no_panic() {
    let mut config = Swarm::config();
    config.request_timeout = Duration::from_millis(2);
    let mut swarm = Swarm::new(config);
    for _ in 0..4 {
        swarm.spawn(Mode::Server);
    }
    for i in 1..4u32 {
        let now = swarm.now;
        let seed = swarm.info(0);
        swarm.peers[i as usize].bootstrap(now, vec![seed]).unwrap();
        swarm.flush(i);
    }
    // 5 ms links against a 2 ms timeout: every request times out, and the
    // lookups end without an answer instead of panicking.
    swarm.run_for(Duration::from_secs(5));
    for peer in &swarm.peers {
        peer.check_invariants().unwrap();
    }
}

#[test]
fn a_batch_of_keys_lands_at_the_true_home_of_each_with_few_lookups() {
    let mut swarm = Swarm::join(70);
    let keys: Vec<Key> = (0..600u32).map(|n| Key::of_name("batch", &n.to_be_bytes())).collect();
    let Event::ProvidedMany {
        keys: placed,
        stored_everywhere,
        unconfirmed,
        lookups,
        stores,
        ..
    } = provide_many(&mut swarm, 7, keys.clone())
    else {
        unreachable!()
    };
    assert_eq!((placed, stored_everywhere, unconfirmed), (600, 600, 0));
    // 70 peers, k = 20: more than one lookup, far fewer than one per key;
    // and far fewer messages than one per key and home member.
    assert!(lookups > 1 && lookups < 60, "{lookups} lookups");
    assert!(stores < 300, "{stores} store messages");
    let now = swarm.now;
    for key in &keys {
        for member in swarm.true_closest(key, u32::MAX).into_iter().take(3) {
            let held = swarm.peers[member as usize].record_store().providers(key, now, 20);
            assert!(
                held.iter().any(|p| p.provider.addr == 7),
                "home member {member} of {key} lacks the record"
            );
        }
    }
    let now = swarm.now;
    let query = swarm.peers[50].get_providers(now, keys[123]).unwrap();
    swarm.flush(50);
    let Event::GotProviders { providers, .. } =
        swarm.await_event(|e| matches!(e, Event::GotProviders { query: q, .. } if *q == query))
    else {
        unreachable!()
    };
    assert_eq!(providers.iter().map(|p| p.provider.addr).collect::<Vec<_>>(), vec![7]);
}

#[test]
fn in_a_swarm_of_at_most_k_peers_one_lookup_places_every_key() {
    let mut swarm = Swarm::join(15);
    let keys: Vec<Key> = (0..300u32).map(|n| Key::of_name("batch", &n.to_be_bytes())).collect();
    let Event::ProvidedMany {
        keys: placed,
        unconfirmed,
        lookups,
        stores,
        ..
    } = provide_many(&mut swarm, 3, keys)
    else {
        unreachable!()
    };
    assert_eq!((placed, unconfirmed, lookups), (300, 0, 1));
    // One message per home member that holds anything (the batch fits).
    assert!(stores <= 14, "{stores} store messages");
}

#[test]
fn a_long_lived_value_outlives_its_silent_publisher_and_the_default_ttl() {
    let mut swarm = Swarm::join(12);
    let (key, short) = (target(9), target(10));
    let day = Duration::from_secs(24 * 60 * 60);
    let now = swarm.now;
    let core = &mut swarm.peers[5];
    // Beyond the limit, or zero, is refused up front.
    assert!(core.put_value_for(now, key, b"x".to_vec(), 500 * day).is_err());
    assert!(core.put_value_for(now, key, b"x".to_vec(), Duration::ZERO).is_err());
    let query = core.put_value_for(now, key, b"pin".to_vec(), 10 * day).unwrap();
    swarm.flush(5);
    swarm.await_event(|e| matches!(e, Event::Put { query: q, stored, .. } if *q == query && *stored > 0));
    assert!(put(&mut swarm, 5, short, b"short") > 0);
    // The publisher goes silent: it never republishes again.
    swarm.down.insert(5);
    swarm.run_for(2 * day);
    // The default-lifetime record lapsed; the long-lived one is still held and served.
    assert!(get(&mut swarm, 7, short).is_none());
    assert_eq!(get(&mut swarm, 7, key).expect("still held").value, b"pin");
}

#[test]
fn a_peer_far_outside_a_home_hands_its_records_on_and_forgets_them() {
    let mut swarm = Swarm::join(30);
    let key = target(11);
    assert_eq!(put(&mut swarm, 2, key, b"kept at home"), 3);
    let ranked = swarm.true_closest(&key, u32::MAX);
    let (home, far) = (ranked[..3].to_vec(), *ranked.last().unwrap());
    // The farthest peer holds a copy (as a long-ago home member would).
    let record = swarm.peers[home[0] as usize]
        .record_store()
        .value(&key, swarm.now)
        .unwrap()
        .clone();
    let now = swarm.now;
    assert_eq!(
        swarm.peers[far as usize].restore_records(now, vec![record], Vec::new()),
        1
    );
    // A home member just outside keeps its copy (rank 4 of 30 is not far).
    let near = ranked[3];
    let record = swarm.peers[home[0] as usize]
        .record_store()
        .value(&key, swarm.now)
        .unwrap()
        .clone();
    swarm.peers[near as usize].restore_records(now, vec![record], Vec::new());
    swarm.run_for(swarm.config.replicate_interval * 2);
    let holders = swarm.holders(&key);
    assert!(!holders.contains(&far), "the far copy was forgotten: {holders:?}");
    assert!(holders.contains(&near), "the near copy stays: {holders:?}");
    for member in home {
        assert!(holders.contains(&member), "{member} of the home holds it: {holders:?}");
    }
}

#[test]
fn a_crashed_neighbour_drops_out_of_the_nearest_tables_without_any_lookup() {
    let mut swarm = Swarm::join(16);
    // Let join traffic die down; then nothing but maintenance runs.
    swarm.run_for(Duration::from_secs(120));
    let dead = 7u32;
    let dead_key = swarm.info(dead).key;
    // The peers that have the dead one among their 6 nearest.
    let neighbours: Vec<u32> = (0..16u32)
        .filter(|p| *p != dead)
        .filter(|p| {
            let me = swarm.info(*p).key;
            swarm.peers[*p as usize]
                .routing_table()
                .closest(&me, 6, None)
                .iter()
                .any(|q| q.key == dead_key)
        })
        .collect();
    assert!(!neighbours.is_empty());
    swarm.down.insert(dead);
    // Three maintenance rounds, well under the 10-minute bucket refresh.
    swarm.run_for(swarm.config.maintenance_interval * 3);
    for p in neighbours {
        let me = swarm.info(p).key;
        let near = swarm.peers[p as usize].routing_table().closest(&me, 16, None);
        assert!(
            near.iter().all(|q| q.key != dead_key),
            "peer {p} still counts the dead peer"
        );
    }
}

#[test]
fn a_peer_restarting_with_the_peers_it_remembers_refreshes_fewer_buckets() {
    let mut swarm = Swarm::join(150);
    swarm.run_for(Duration::from_secs(30));
    let peer = 149u32;
    let me = swarm.info(peer).key;
    let remembered: Vec<PeerInfo<u32>> = swarm.peers[peer as usize].routing_table().peers().collect();
    let k = swarm.config.k;
    let check = |swarm: &Swarm, how: &str| {
        let want: Vec<u32> = swarm.true_closest(&me, peer).into_iter().take(k).collect();
        let got: Vec<u32> = swarm.peers[peer as usize]
            .routing_table()
            .closest(&me, k, None)
            .iter()
            .map(|p| p.addr)
            .collect();
        assert_eq!(got, want, "{how}: the table holds the true {k} nearest");
    };
    // As a new peer: one seed, every sparse bucket refreshed.
    let fresh = swarm.rejoin(peer, vec![swarm.info(0)]);
    check(&swarm, "through one seed");
    // As the node restarts: through the peers it remembers, whose buckets
    // need no refresh.
    let restarted = swarm.rejoin(peer, remembered);
    check(&swarm, "through its remembered peers");
    assert!(
        restarted * 3 < fresh * 2,
        "a restart sent {restarted} requests, a fresh join {fresh}"
    );
}

#[test]
fn a_peer_that_declines_a_key_steps_aside_and_the_next_one_takes_its_place() {
    let mut swarm = Swarm::join(30);
    let key = target(9);
    let nearest = swarm.true_closest(&key, u32::MAX);
    let (decliner, fourth) = (nearest[0], nearest[3]);
    let decliner_key = swarm.info(decliner).key;
    put(&mut swarm, nearest[10], key, b"kept by the home");
    assert!(
        !swarm.holders(&key).contains(&fourth),
        "the fourth peer is outside the home"
    );
    // The nearest peer once provided the key (a day-long record) ...
    swarm.until_put(decliner, |core, now| core.start_providing(now, key).unwrap());
    swarm.run_for(Duration::from_millis(10));
    // ... and has no room now: it declines, and the shorter-lived decline,
    // issued later, takes the provider record's place.
    swarm.until_put(decliner, |core, now| core.decline(now, key).unwrap());
    // Well before the next replication round.
    swarm.run_for(Duration::from_secs(1));
    let home: Vec<u32> = nearest[1..4].to_vec();
    for member in &home {
        let core = &swarm.peers[*member as usize];
        assert!(core.is_home_member(&key), "{member} is in the home");
        assert!(!core.in_home(&key, &decliner_key), "{member} leaves the decliner out");
        let seen: Vec<u32> = core.home_of(&key).iter().map(|p| p.addr).collect();
        assert_eq!(seen, home, "the home as {member} sees it");
    }
    assert!(!swarm.peers[decliner as usize].is_home_member(&key));
    assert!(
        swarm.holders(&key).contains(&fourth),
        "the new member was handed the record at once"
    );
    // A providers lookup does not list a peer that declined.
    let now = swarm.now;
    let query = swarm.peers[20].get_providers(now, key).unwrap();
    swarm.flush(20);
    let event = swarm.await_event(|e| matches!(e, Event::GotProviders { query: q, .. } if *q == query));
    let Event::GotProviders { providers, .. } = event else {
        unreachable!()
    };
    assert!(providers.is_empty(), "{providers:?}");
    // Providing the key again takes the decline back.
    let now = swarm.now;
    swarm.peers[decliner as usize].start_providing(now, key).unwrap();
    swarm.flush(decliner);
    swarm.run_for(Duration::from_secs(1));
    assert!(swarm.peers[nearest[1] as usize].in_home(&key, &decliner_key));
}

#[test]
fn idle_buckets_deeper_than_the_kth_neighbour_cost_one_lookup_together() {
    let mut swarm = Swarm::join(60);
    swarm.run_for(Duration::from_secs(5));
    let later = swarm.now + swarm.config.refresh_interval + swarm.config.maintenance_interval;
    let k = swarm.config.k;
    let core = &mut swarm.peers[7];
    assert_eq!(core.queries_in_flight(), 0);
    let me = core.local().key;
    let buckets = core.routing_table().bucket_count();
    let kth = core.routing_table().closest(&me, k, None)[k - 1].key;
    let covered = me.common_prefix_len(&kth) + 1;
    assert!(covered + 1 < buckets, "a table with buckets past the k-th neighbour's");
    // Every bucket has been idle a whole refresh interval.
    core.handle_timeout(later);
    assert_eq!(
        core.queries_in_flight(),
        covered + 1,
        "one lookup per bucket up to the k-th neighbour's, one for all deeper"
    );
}

#[test]
fn a_core_saved_and_resumed_in_the_middle_of_a_lookup_goes_on_as_the_one_saved() {
    // The same run twice; in the second, peer 5 is saved and resumed while
    // its read is in flight (requests out, candidates half asked) and its
    // own record is due for republishing.
    let run = |save: bool| {
        let mut swarm = Swarm::join(30);
        let key = target(9);
        assert_eq!(put(&mut swarm, 5, key, b"kept across a save"), 3);
        swarm.run_for(Duration::from_secs(600));
        let first_seq = get(&mut swarm, 21, key).unwrap().seq;
        let now = swarm.now;
        let query = swarm.peers[5].get_value(now, target(10)).unwrap();
        swarm.flush(5);
        swarm.step();
        if save {
            let config = (*swarm.config).clone();
            save_and_resume(&mut swarm, 5, 5, config).unwrap();
        }
        swarm.await_event(|e| matches!(e, Event::GotValue { query: q, .. } if *q == query));
        swarm.run_for(Duration::from_secs(2 * 3600));
        let record = get(&mut swarm, 21, key).unwrap();
        // Republished since the save (every hour), signed by the resumed
        // core and accepted by ed25519-checking peers.
        assert!(record.seq > first_seq, "{} then {}", first_seq, record.seq);
        let state: Vec<String> = swarm.peers.iter().map(|p| format!("{p:?}")).collect();
        (record, swarm.sent.clone(), state)
    };
    let (record, sent, state) = run(false);
    let (record_resumed, sent_resumed, state_resumed) = run(true);
    assert_eq!(record_resumed, record);
    assert_eq!(sent_resumed, sent, "every peer sent the same requests");
    assert_eq!(state_resumed, state, "every core ended in the same state");
}

#[test]
fn a_core_resumes_only_with_its_own_key_and_bucket_size() {
    let mut swarm = Swarm::join(5);
    let config = (*swarm.config).clone();
    let err = save_and_resume(&mut swarm, 2, 3, config.clone()).unwrap_err();
    assert!(err.contains("public key"), "{err}");
    let mut other = config;
    other.k = 8;
    let err = save_and_resume(&mut swarm, 2, 2, other).unwrap_err();
    assert!(err.contains("bucket size"), "{err}");
}
