//! The `jobs` scenario (first version, issue 18): jobs placed on peers'
//! slots by [`Placement`] — the machine the node will run — and queued by
//! each executor's [`FairQueue`], compared in one run with random
//! placement (one probe); each policy also with executors handing the
//! back of their queue to peers with a free slot ([`Steal`], the machine
//! the node's executor runs: probes and hand-offs take LAN delays, a
//! hand-off three of them, for the release at the job's home and the new
//! grant).
//!
//! What is modelled, and what is not yet: each message takes a one-way
//! LAN delay (0.1–0.6 ms, drawn per message); a probe reads the executor's
//! load when it arrives; a claim starts the job if a slot is free or queues
//! it. Jobs arrive as a Poisson stream at `load` × capacity, with
//! exponential service times. The slot index is modelled as a uniform
//! sample of `candidates` offering peers (what one slot-class read would
//! list), plus, for a job with an input, the input's holders: three at
//! first, and every peer that fetched it to run a job, as a node's download
//! announces it as a provider (caches are not evicted here). The
//! overlay itself (the slot-class reads, the job records at their homes)
//! is not simulated here yet.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use shoal_overlay::{Instant, Key, Rng};
use shoal_resources::compute::{
    Candidate, FairQueue, JobKind, Load, Needs, PlaceAction, PlaceError, Placement, SlotOffer, Steal,
};

/// What the scenario runs.
#[derive(Clone, Debug)]
pub struct JobsSpec {
    /// Peers offering slots.
    pub peers: usize,
    /// Slots per peer.
    pub slots: u32,
    /// Jobs submitted.
    pub jobs: usize,
    /// Arrival rate as a share of capacity (0.8: 80%).
    pub load: f64,
    /// Mean service time of a job.
    pub mean_service: Duration,
    /// Candidates probed (power-of-d choices).
    pub d: usize,
    /// Offers one slot-class read lists.
    pub candidates: usize,
    /// Share of jobs with an input (a pinned blob on three peers).
    pub with_input: f64,
    /// Distinct inputs.
    pub inputs: usize,
    /// Queue places a holder of the input may be behind and still win.
    pub input_bonus: u32,
    /// Whether a peer that fetched an input to run a job provides it from
    /// then on, as a node does (`false`: only the three first holders).
    pub cache_inputs: bool,
    /// Seed of the run.
    pub seed: u64,
}

/// How one placement policy did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyReport {
    /// Candidates probed per job.
    pub d: usize,
    /// Jobs placed.
    pub placed: usize,
    /// Jobs that found no slot (should be 0: a busy slot queues).
    pub unplaced: usize,
    /// Submit to claim taken, simulated milliseconds.
    pub placement_ms_p50: f64,
    /// The same, 99th percentile.
    pub placement_ms_p99: f64,
    /// Submit to start (placement and queueing), p50 and p99, seconds.
    pub wait_s_p50: f64,
    /// The same, 99th percentile.
    pub wait_s_p99: f64,
    /// The longest queue seen at any peer (sampled every simulated second).
    pub queue_max: usize,
    /// The mean queue length over peers and samples.
    pub queue_mean: f64,
    /// Of the jobs with an input, the share that ran on a peer holding it.
    pub input_local: f64,
    /// Whether executors handed queued jobs to idle peers ([`Steal`]).
    pub stealing: bool,
    /// Jobs so handed on.
    pub handed_on: usize,
}

/// The scenario's report: the policy asked for and random placement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobsReport {
    /// Peers, slots per peer, jobs, load.
    pub peers: usize,
    /// Slots per peer.
    pub slots: u32,
    /// Jobs submitted.
    pub jobs: usize,
    /// Arrival rate as a share of capacity.
    pub load: f64,
    /// Power-of-d choices.
    pub power_of_d: PolicyReport,
    /// Power-of-d choices, and executors hand queued jobs to idle peers.
    pub power_of_d_stealing: PolicyReport,
    /// One random candidate.
    pub random: PolicyReport,
    /// One random candidate, and executors hand queued jobs to idle peers.
    pub random_stealing: PolicyReport,
}

/// Runs the scenario four times on the same arrivals: with `spec.d`
/// probes, input holders preferred, and at random (one probe, inputs
/// ignored); each with and without executors handing queued jobs to idle
/// peers.
pub fn jobs(spec: &JobsSpec) -> JobsReport {
    JobsReport {
        peers: spec.peers,
        slots: spec.slots,
        jobs: spec.jobs,
        load: spec.load,
        power_of_d: run(spec, spec.d, true, false),
        power_of_d_stealing: run(spec, spec.d, true, true),
        random: run(spec, 1, false, false),
        random_stealing: run(spec, 1, false, true),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(usize),
    /// A message for job `job`'s placement reaches `peer` (a probe or a
    /// claim), or its answer comes back.
    Probe {
        job: usize,
        peer: usize,
    },
    ProbeAnswer {
        job: usize,
        peer: usize,
        free: u32,
        queued: u32,
    },
    Claim {
        job: usize,
        peer: usize,
    },
    ClaimAnswer {
        job: usize,
        peer: usize,
    },
    Finish {
        peer: usize,
    },
    Sample,
    /// An executor with jobs waiting considers handing some on.
    StealTick {
        peer: usize,
    },
    /// Its probe reaches `to`, and the answer comes back.
    StealProbe {
        from: usize,
        to: usize,
    },
    StealAnswer {
        from: usize,
        to: usize,
        free: u32,
        queued: u32,
    },
    /// A job handed on reaches the peer it was placed on (its release at
    /// its home and its new grant: three messages' time).
    Handed {
        job: usize,
        to: usize,
    },
}

struct Peer {
    running: u32,
    queue: FairQueue,
    steal: Steal,
    /// A `StealTick` is on its way.
    ticking: bool,
    /// The round under way: the jobs it may hand, the answers so far, the
    /// answers still awaited.
    round: Option<Round>,
}

/// A stealing round: the jobs it may hand, the answers so far, the answers
/// still awaited.
type Round = (Vec<Key>, Vec<(Key, Load)>, usize);

struct Job {
    submitter: usize,
    input: Option<usize>,
    arrived: u64,
    placement: Placement,
    started: Option<u64>,
    claimed: Option<u64>,
    /// When it joined the queue it waits in.
    queued_at: u64,
    /// Whether the peer that took it held its input when it was claimed.
    local: bool,
}

/// A peer's or a job's key in this model: its index in the first 8 bytes
/// (the machines use keys only as names).
fn key_of(index: usize) -> Key {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(index as u64).to_be_bytes());
    Key::from_bytes(bytes)
}

fn index_of(key: &Key) -> usize {
    let bytes = key.to_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first) as usize
}

/// A job reaching the peer that takes it (claimed, or handed on).
struct Take<'a> {
    peer: &'a mut Peer,
    index: usize,
    job: &'a mut Job,
    key: Key,
    now: u64,
    rng: &'a mut Rng,
}

fn take<'a>(peer: &'a mut Peer, index: usize, job: &'a mut Job, j: usize, now: u64, rng: &'a mut Rng) -> Take<'a> {
    Take {
        peer,
        index,
        job,
        key: key_of(j),
        now,
        rng,
    }
}

impl Take<'_> {
    /// Starts it in a free slot (its end is the event returned) or queues
    /// it (and, with stealing, the peer's first stealing tick).
    fn next(self, spec: &JobsSpec, stealing: bool, mean_service_us: f64, patience: u64) -> Option<(u64, Ev)> {
        let (p, now) = (self.peer, self.now);
        if p.running < spec.slots {
            p.running += 1;
            self.job.started = Some(now);
            let service = (-mean_service_us * (1.0 - self.rng.unit_f64()).ln()) as u64;
            return Some((now + service.max(1), Ev::Finish { peer: self.index }));
        }
        let _ = p.queue.push(key_of(self.job.submitter), self.key);
        self.job.queued_at = now;
        if stealing && !p.ticking {
            p.ticking = true;
            return Some((now + patience, Ev::StealTick { peer: self.index }));
        }
        None
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(spec: &JobsSpec, d: usize, prefer_inputs: bool, stealing: bool) -> PolicyReport {
    let mut rng = Rng::derive(spec.seed, 11);
    let mut arrivals = Rng::derive(spec.seed, 12);
    let offer = SlotOffer {
        kinds: vec![JobKind::Wasm],
        slots: spec.slots,
        slot_memory: 1 << 30,
        labels: Default::default(),
    };
    let mut holders: Vec<Vec<usize>> = (0..spec.inputs)
        .map(|_| {
            let mut first: Vec<usize> = (0..3).map(|_| arrivals.index(spec.peers)).collect();
            first.sort_unstable();
            first.dedup();
            first
        })
        .collect();
    let capacity_per_s = spec.peers as f64 * f64::from(spec.slots) / spec.mean_service.as_secs_f64();
    let gap_us = 1e6 / (capacity_per_s * spec.load);
    let mean_service_us = spec.mean_service.as_secs_f64() * 1e6;
    let mut peers: Vec<Peer> = (0..spec.peers)
        .enumerate()
        .map(|(i, _)| Peer {
            running: 0,
            queue: FairQueue::new(1 << 20),
            steal: Steal::new(spec.seed ^ i as u64),
            ticking: false,
            round: None,
        })
        .collect();
    let mut jobs: Vec<Job> = Vec::with_capacity(spec.jobs);
    let mut queue: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, at: u64, ev: Ev| {
        seq += 1;
        queue.push(Reverse((at, seq, ev)));
    };
    let mut t = 0.0f64;
    for j in 0..spec.jobs {
        t += -gap_us * (1.0 - arrivals.unit_f64()).ln();
        let input = arrivals
            .chance(spec.with_input)
            .then(|| arrivals.index(spec.inputs.max(1)));
        jobs.push(Job {
            submitter: arrivals.index(spec.peers),
            input,
            arrived: t as u64,
            placement: Placement::new(Needs::default(), d, Duration::from_millis(500), arrivals.next_u64())
                .with_input_bonus(spec.input_bonus),
            started: None,
            claimed: None,
            queued_at: 0,
            local: false,
        });
        push(&mut queue, t as u64, Ev::Arrive(j));
    }
    push(&mut queue, 1_000_000, Ev::Sample);
    let (mut queue_max, mut queue_sum, mut queue_samples) = (0usize, 0f64, 0u64);
    let mut unplaced = 0usize;
    let mut left = spec.jobs;
    let mut handed_on = 0usize;
    let hop = |rng: &mut Rng| 100 + rng.below(500);
    let patience = Steal::new(0).patience.as_micros() as u64;
    let every = Steal::new(0).every.as_micros() as u64;
    while let Some(Reverse((now, _, ev))) = queue.pop() {
        let at = Instant::from_micros(now);
        let mut touched = None;
        match ev {
            Ev::Arrive(j) => {
                let job = &jobs[j];
                let mut picks: Vec<usize> = (0..spec.candidates).map(|_| rng.index(spec.peers)).collect();
                let inputs: Vec<usize> = job.input.map(|i| holders[i].clone()).unwrap_or_default();
                if prefer_inputs {
                    picks.extend(&inputs);
                }
                let candidates = picks
                    .into_iter()
                    .map(|p| Candidate {
                        peer: key_of(p),
                        offer: offer.clone(),
                        holds_inputs: prefer_inputs && inputs.contains(&p),
                    })
                    .collect();
                jobs[j].placement.handle_candidates(at, candidates);
                touched = Some(j);
            }
            Ev::Probe { job, peer } => {
                let p = &peers[peer];
                let (free, queued) = (spec.slots - p.running, p.queue.len() as u32);
                let back = now + hop(&mut rng);
                push(
                    &mut queue,
                    back,
                    Ev::ProbeAnswer {
                        job,
                        peer,
                        free,
                        queued,
                    },
                );
            }
            Ev::ProbeAnswer {
                job,
                peer,
                free,
                queued,
            } => {
                jobs[job]
                    .placement
                    .handle_probe(at, key_of(peer), Some(Load { free, queued }));
                touched = Some(job);
            }
            Ev::Claim { job, peer } => {
                let taken = take(&mut peers[peer], peer, &mut jobs[job], job, now, &mut rng);
                if let Some((at, ev)) = taken.next(spec, stealing, mean_service_us, patience) {
                    push(&mut queue, at, ev);
                }
                if let Some(i) = jobs[job].input {
                    // The executor fetches the input to run the job, and
                    // from then on provides it.
                    match holders[i].binary_search(&peer) {
                        Ok(_) => jobs[job].local = true,
                        Err(at) if spec.cache_inputs => holders[i].insert(at, peer),
                        Err(_) => {}
                    }
                }
                let back = now + hop(&mut rng);
                push(&mut queue, back, Ev::ClaimAnswer { job, peer });
            }
            Ev::ClaimAnswer { job, peer } => {
                jobs[job].claimed = Some(now);
                jobs[job].placement.handle_claim(at, key_of(peer), true);
                touched = Some(job);
            }
            Ev::Finish { peer } => {
                left -= 1;
                let p = &mut peers[peer];
                p.running -= 1;
                if let Some((_, next)) = p.queue.pop() {
                    p.running += 1;
                    jobs[index_of(&next)].started = Some(now);
                    let service = (-mean_service_us * (1.0 - rng.unit_f64()).ln()) as u64;
                    push(&mut queue, now + service.max(1), Ev::Finish { peer });
                }
            }
            Ev::StealTick { peer } => {
                let p = &mut peers[peer];
                p.ticking = false;
                if p.round.is_some() {
                    continue;
                }
                let waiting: Vec<(Key, Instant)> = p
                    .queue
                    .in_order()
                    .into_iter()
                    .map(|k| (k, Instant::from_micros(jobs[index_of(&k)].queued_at)))
                    .collect();
                let due = p.steal.due(at, &waiting);
                let picks = if due.is_empty() {
                    Vec::new()
                } else {
                    let listed: Vec<Key> = (0..spec.candidates).map(|_| key_of(rng.index(spec.peers))).collect();
                    p.steal.pick(&listed, &key_of(peer))
                };
                if picks.is_empty() {
                    if !p.queue.is_empty() {
                        p.ticking = true;
                        push(&mut queue, now + every / 2, Ev::StealTick { peer });
                    }
                    continue;
                }
                p.round = Some((due, Vec::new(), picks.len()));
                for to in picks {
                    let back = now + hop(&mut rng);
                    push(
                        &mut queue,
                        back,
                        Ev::StealProbe {
                            from: peer,
                            to: index_of(&to),
                        },
                    );
                }
            }
            Ev::StealProbe { from, to } => {
                let p = &peers[to];
                let (free, queued) = (spec.slots - p.running, p.queue.len() as u32);
                let back = now + hop(&mut rng);
                push(&mut queue, back, Ev::StealAnswer { from, to, free, queued });
            }
            Ev::StealAnswer { from, to, free, queued } => {
                let p = &mut peers[from];
                let Some((_, loads, awaited)) = p.round.as_mut() else {
                    continue;
                };
                loads.push((key_of(to), Load { free, queued }));
                *awaited -= 1;
                if *awaited > 0 {
                    continue;
                }
                let (due, loads, _) = p.round.take().unwrap_or_default();
                for (job, to) in p.steal.assign(&due, &loads) {
                    // A job that started here meanwhile stays.
                    if p.queue.remove(&job) {
                        handed_on += 1;
                        let back = now + hop(&mut rng) + hop(&mut rng) + hop(&mut rng);
                        push(
                            &mut queue,
                            back,
                            Ev::Handed {
                                job: index_of(&job),
                                to: index_of(&to),
                            },
                        );
                    }
                }
                if !p.queue.is_empty() && !p.ticking {
                    p.ticking = true;
                    push(&mut queue, now + every, Ev::StealTick { peer: from });
                }
            }
            Ev::Handed { job, to } => {
                let taken = take(&mut peers[to], to, &mut jobs[job], job, now, &mut rng);
                if let Some((at, ev)) = taken.next(spec, true, mean_service_us, patience) {
                    push(&mut queue, at, ev);
                }
            }
            Ev::Sample => {
                let lens = peers.iter().map(|p| p.queue.len());
                for len in lens {
                    queue_max = queue_max.max(len);
                    queue_sum += len as f64;
                }
                queue_samples += spec.peers as u64;
                if left > 0 {
                    push(&mut queue, now + 1_000_000, Ev::Sample);
                }
            }
        }
        if let Some(j) = touched {
            while let Some(action) = jobs[j].placement.poll_action() {
                let back = now + hop(&mut rng);
                match action {
                    PlaceAction::Probe(k) => push(
                        &mut queue,
                        back,
                        Ev::Probe {
                            job: j,
                            peer: index_of(&k),
                        },
                    ),
                    PlaceAction::Claim(k) => push(
                        &mut queue,
                        back,
                        Ev::Claim {
                            job: j,
                            peer: index_of(&k),
                        },
                    ),
                }
            }
            if let Some(Err(PlaceError::NoMatch | PlaceError::NoAnswer)) = jobs[j].placement.poll_outcome() {
                unplaced += 1;
                left -= 1;
            }
        }
    }
    let mut placement_ms: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j.claimed.map(|c| (c - j.arrived) as f64 / 1e3))
        .collect();
    placement_ms.sort_by(f64::total_cmp);
    let mut wait_s: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j.started.map(|s| (s - j.arrived) as f64 / 1e6))
        .collect();
    wait_s.sort_by(f64::total_cmp);
    let with_input: Vec<&Job> = jobs.iter().filter(|j| j.input.is_some()).collect();
    let local = with_input.iter().filter(|j| j.local).count();
    PolicyReport {
        d,
        placed: placement_ms.len(),
        unplaced,
        placement_ms_p50: percentile(&placement_ms, 0.5),
        placement_ms_p99: percentile(&placement_ms, 0.99),
        wait_s_p50: percentile(&wait_s, 0.5),
        wait_s_p99: percentile(&wait_s, 0.99),
        queue_max,
        queue_mean: if queue_samples > 0 {
            queue_sum / queue_samples as f64
        } else {
            0.0
        },
        input_local: if with_input.is_empty() {
            0.0
        } else {
            local as f64 / with_input.len() as f64
        },
        stealing,
        handed_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(load: f64) -> JobsSpec {
        JobsSpec {
            peers: 200,
            slots: 2,
            jobs: 4000,
            load,
            mean_service: Duration::from_secs(2),
            d: 2,
            candidates: 20,
            with_input: 0.5,
            inputs: 100,
            input_bonus: 2,
            cache_inputs: true,
            seed: 3,
        }
    }

    #[test]
    fn every_job_is_placed_and_two_choices_keep_queues_shorter_than_one() {
        let report = jobs(&spec(0.9));
        for policy in [&report.power_of_d, &report.random] {
            assert_eq!(policy.placed, 4000, "{policy:?}");
            assert_eq!(policy.unplaced, 0);
            assert!(policy.placement_ms_p50 > 0.0);
        }
        assert!(
            report.power_of_d.queue_max < report.random.queue_max,
            "{:?} against {:?}",
            report.power_of_d,
            report.random
        );
        assert!(report.power_of_d.wait_s_p99 < report.random.wait_s_p99);
        // Holders of the input are probed first and preferred; at random,
        // about 3 in 20 land on one.
        assert!(report.power_of_d.input_local > 0.9, "{:?}", report.power_of_d);
        assert!(report.random.input_local < 0.5, "{:?}", report.random);
    }

    #[test]
    fn inputs_fetched_to_run_a_job_are_provided_and_draw_later_jobs() {
        // Inputs used 50 times each, by jobs on 1,000 peers at 80% load:
        // three pinned holders cannot take them all, the peers that
        // fetched an input can.
        let spread = JobsSpec {
            peers: 1000,
            jobs: 10_000,
            load: 0.8,
            inputs: 100,
            ..spec(0.8)
        };
        let cached = jobs(&spread).power_of_d;
        let pinned_only = jobs(&JobsSpec {
            cache_inputs: false,
            ..spread
        })
        .power_of_d;
        assert!(cached.input_local >= 0.9, "{cached:?}");
        assert!(
            pinned_only.input_local < cached.input_local - 0.1,
            "{pinned_only:?} against {cached:?}"
        );
    }

    #[test]
    fn executors_that_hand_queued_jobs_to_idle_peers_cut_the_wait() {
        let report = jobs(&spec(0.8));
        for (with, without) in [
            (&report.random_stealing, &report.random),
            (&report.power_of_d_stealing, &report.power_of_d),
        ] {
            assert_eq!(with.placed, 4000, "{with:?}");
            assert!(with.handed_on > 0 && without.handed_on == 0, "{with:?}");
            assert!(with.wait_s_p99 < without.wait_s_p99, "{with:?} against {without:?}");
            assert!(with.queue_mean < without.queue_mean, "{with:?} against {without:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let (a, b) = (jobs(&spec(0.8)), jobs(&spec(0.8)));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
