//! Tests of the engine: a broken invariant stops a run, and the search for
//! the true closest peer.

use shoal_overlay::{Instant, PeerInfo};

use super::queries::closest_in;
use super::*;
use crate::net;

#[test]
fn a_broken_invariant_stops_the_run_and_names_the_seed() {
    let mut sim = Sim::new(SimConfig {
        seed: 99,
        net: NetConfig::preset(crate::Preset::Lan),
        overlay: Config::new(sim_verifier()),
        check_interval: Duration::from_secs(1),
        check_sample: 8,
    });
    for _ in 0..3 {
        let peer = sim.add_slot();
        sim.start(peer);
        sim.run_until(sim.now_us() + 1_000_000).unwrap();
    }
    sim.check_all().unwrap();
    // Corrupt one core: it learns peer 2's address under a stranger's key.
    let bogus = PeerInfo::new(Key::of_content(b"not peer 2"), 2);
    let now = Instant::from_micros(net::to_local(sim.now, &sim.slots[0].place));
    sim.slots[0].core.as_mut().unwrap().add_peer(now, bogus);
    let violation = sim.check_all().unwrap_err();
    assert_eq!(violation.seed, 99);
    assert_eq!(violation.peer, Some(0));
    assert!(violation.to_string().contains("seed 99"), "{violation}");
}

#[test]
fn closest_in_matches_brute_force() {
    let mut rng = Rng::seed_from_u64(17);
    for n in [1usize, 2, 3, 10, 100, 1000] {
        let keys: BTreeMap<Key, PeerIndex> = (0..n).map(|i| (rng.key(), i as PeerIndex)).collect();
        for _ in 0..300 {
            let target = rng.key();
            let excluded = if rng.chance(0.5) {
                keys.keys().nth(rng.index(n)).copied()
            } else {
                None
            };
            let brute = keys
                .iter()
                .filter(|(k, _)| Some(**k) != excluded)
                .min_by_key(|(k, _)| k.distance(&target))
                .map(|(_, v)| *v);
            assert_eq!(closest_in(&keys, &target, excluded), brute, "n = {n}");
        }
    }
}
