//! The report a scenario prints: JSON for scripts, a summary for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::sim::{LookupOutcome, Sim};

/// Percentiles of hop counts.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Hops {
    /// Median.
    pub p50: u8,
    /// 90th percentile.
    pub p90: u8,
    /// 99th percentile.
    pub p99: u8,
    /// Largest.
    pub max: u8,
}

/// Percentiles of lookup latency, in milliseconds of virtual time.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One scenario's results. Field meanings are in `README.md`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Which scenario ran.
    pub scenario: String,
    /// Peers in the swarm (slots).
    pub peers: usize,
    /// The seed that reproduces the run.
    pub seed: u64,
    /// Network preset.
    pub net: String,
    /// Lookups measured.
    pub lookups: usize,
    /// Fraction of measured lookups whose result held the true closest peer.
    pub success_rate: f64,
    /// Hop counts of measured lookups.
    pub hops: Hops,
    /// Latency of measured lookups.
    pub latency_ms: Latency,
    /// Requests sent per measured lookup (each answered by one response).
    pub messages_per_lookup: f64,
    /// Events processed in the whole run.
    pub events: u64,
    /// Events per second of wall time.
    pub events_per_s: f64,
    /// Messages sent in the whole run (requests and responses).
    pub messages: u64,
    /// Requests sent in the whole run, by kind.
    pub requests_by_kind: RequestsByKind,
    /// Virtual time simulated.
    pub sim_time_s: f64,
    /// Wall time of the whole run.
    pub wall_s: f64,
    /// Wall time of the join phase.
    pub join_wall_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mb: f64,
    /// Peak resident memory divided by peers.
    pub memory_bytes_per_peer: u64,
    /// Bytes per peer held by its slot, core and routing table at the end.
    pub core_bytes_per_peer: u64,
    /// Hash of the event trace: the same seed gives the same hash.
    pub trace_hash: String,
    /// Churn: fraction of stored records found by a read at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_success_rate: Option<f64>,
    /// Churn: fraction of record reads during churn that found the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_success_rate_during: Option<f64>,
    /// Churn: mean number of joined peers over the churn phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_live_peers: Option<f64>,
    /// Churn: crashes, graceful leaves and (re)joins during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_events: Option<ChurnCounts>,
    /// Partition: seconds from heal until lookups succeed at 99.9% again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconverge_s: Option<f64>,
    /// Partition: lookup success before, during and after the partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_success: Option<PhaseSuccess>,
    /// Durability: what became of the pinned files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// Why the run differs from what was asked (a memory limit stopped the join).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Lookup success over time, `(window start s, success rate, lookups)`.
    #[serde(skip)]
    pub timeline: Vec<(f64, f64, usize)>,
    /// Hop histogram: `hop_histogram[h]` lookups took `h` hops.
    #[serde(skip)]
    pub hop_histogram: Vec<usize>,
    /// Sorted latencies, for the CDF plot.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

/// What the `durability` scenario measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Durability {
    /// Files pinned.
    pub files: usize,
    /// Bytes of each file.
    pub file_bytes: u64,
    /// Copies each pin asks for.
    pub replicas: u8,
    /// Simulated days of churn.
    pub days: f64,
    /// Files with all `replicas` copies on live peers once pinning settled.
    pub placed: usize,
    /// Files with no copy left on any disk that still exists (the goal is 0).
    pub lost: usize,
    /// Files with no copy on a live peer at the end (copies only on peers
    /// that are away and will come back).
    pub unavailable_at_end: usize,
    /// Mean over 10-minute samples of the files with no live copy.
    pub unavailable_mean: f64,
    /// Most files without a live copy at one sample.
    pub unavailable_max: usize,
    /// Mean over samples of the files with fewer than `replicas` live copies.
    pub under_replicated_mean: f64,
    /// Bytes moved by repair (every transfer after churn began), per peer
    /// per simulated day, averaged over the mean number of live peers.
    pub repair_bytes_per_peer_day: f64,
    /// The most bytes one slot received by repair, per simulated day.
    pub repair_bytes_max_peer_day: f64,
    /// Pinned copies per live peer at the end: most, mean, and their ratio.
    pub spread_max: u32,
    /// Mean pinned copies per live peer at the end.
    pub spread_mean: f64,
    /// `spread_max / spread_mean`.
    pub spread_ratio: f64,
    /// Copies on a live peer's disk at the end, pinned or released (kept
    /// until the quota needs the room): most and mean.
    pub stored_max: u32,
    /// Mean copies on a live peer's disk at the end.
    pub stored_mean: f64,
    /// Each peer's quota in bytes, if any.
    pub quota_bytes: Option<u64>,
    /// Departures that never came back (disk gone; a fresh peer joined instead).
    pub permanent_departures: u64,
    /// Counters of the files layer.
    pub counters: crate::sim::FileCounters,
}

/// Requests sent, by kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RequestsByKind {
    /// Liveness and eviction pings.
    pub ping: u64,
    /// Lookup steps for peers.
    pub find_node: u64,
    /// Lookup steps for values.
    pub get_value: u64,
    /// Lookup steps for providers.
    pub get_providers: u64,
    /// Value stores (puts, replication, hand-off).
    pub put_value: u64,
    /// Provider stores.
    pub add_provider: u64,
}

/// Churn counters.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ChurnCounts {
    /// Crashes.
    pub crashes: u64,
    /// Graceful leaves.
    pub leaves: u64,
    /// Joins, restarts included.
    pub joins: u64,
}

/// Lookup success in the phases of a partition run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PhaseSuccess {
    /// Before the split.
    pub before: f64,
    /// While split.
    pub during: f64,
    /// From the heal to the end.
    pub after: f64,
}

fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Success rate of lookups, 1.0 for none.
pub fn success(lookups: &[&LookupOutcome]) -> f64 {
    if lookups.is_empty() {
        return 1.0;
    }
    lookups.iter().filter(|l| l.success).count() as f64 / lookups.len() as f64
}

impl Report {
    /// The common fields, from the lookups that count and the whole run.
    pub fn build(
        scenario: &str,
        sim: &mut Sim,
        net: &str,
        measured: &[&LookupOutcome],
        wall_s: f64,
        join_wall_s: f64,
    ) -> Report {
        let mut hops: Vec<u8> = measured.iter().map(|l| l.hops).collect();
        hops.sort_unstable();
        let mut latencies: Vec<f64> = measured.iter().map(|l| l.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        let requests: u64 = measured.iter().map(|l| u64::from(l.requests)).sum();
        let mut histogram = vec![0usize; usize::from(hops.last().copied().unwrap_or(0)) + 1];
        for h in &hops {
            histogram[usize::from(*h)] += 1;
        }
        let peak_rss_mb = peak_rss_bytes() as f64 / (1024.0 * 1024.0);
        let peers = sim.slots();
        Report {
            scenario: scenario.to_string(),
            peers,
            seed: sim.seed(),
            net: net.to_string(),
            lookups: measured.len(),
            success_rate: success(measured),
            hops: Hops {
                p50: percentile(&hops, 50.0).unwrap_or(0),
                p90: percentile(&hops, 90.0).unwrap_or(0),
                p99: percentile(&hops, 99.0).unwrap_or(0),
                max: hops.last().copied().unwrap_or(0),
            },
            latency_ms: Latency {
                p50: round3(percentile(&latencies, 50.0).unwrap_or(0.0)),
                p90: round3(percentile(&latencies, 90.0).unwrap_or(0.0)),
                p99: round3(percentile(&latencies, 99.0).unwrap_or(0.0)),
            },
            messages_per_lookup: round3(if measured.is_empty() {
                0.0
            } else {
                requests as f64 / measured.len() as f64
            }),
            events: sim.counters.events,
            events_per_s: (sim.counters.events as f64 / wall_s.max(1e-9)).round(),
            messages: sim.counters.messages,
            requests_by_kind: {
                let k = sim.counters.requests_by_kind;
                RequestsByKind {
                    ping: k[0],
                    find_node: k[1],
                    get_value: k[2],
                    get_providers: k[3],
                    put_value: k[4],
                    add_provider: k[5],
                }
            },
            sim_time_s: round3(sim.now_s()),
            wall_s: round3(wall_s),
            join_wall_s: round3(join_wall_s),
            peak_rss_mb: round3(peak_rss_mb),
            memory_bytes_per_peer: (peak_rss_bytes() / peers.max(1) as u64),
            core_bytes_per_peer: sim.core_bytes_per_peer(),
            trace_hash: sim.trace_hash(),
            timeline: timeline(measured),
            hop_histogram: histogram,
            latencies_ms: latencies,
            ..Report::default()
        }
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} — {} peers, {} network, seed {}",
            self.scenario, self.peers, self.net, self.seed
        );
        let _ = writeln!(
            s,
            "  lookups       {} measured, {:.3}% found the true closest peer",
            self.lookups,
            self.success_rate * 100.0
        );
        let _ = writeln!(
            s,
            "  hops          p50 {}  p90 {}  p99 {}  max {}",
            self.hops.p50, self.hops.p90, self.hops.p99, self.hops.max
        );
        let _ = writeln!(
            s,
            "  latency       p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms (virtual)",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99
        );
        let _ = writeln!(s, "  messages      {:.1} requests per lookup", self.messages_per_lookup);
        if let Some(r) = self.record_success_rate {
            let _ = writeln!(s, "  records       {:.3}% found at the end", r * 100.0);
        }
        if let Some(r) = self.record_success_rate_during {
            let _ = writeln!(
                s,
                "                {:.3}% of reads during churn found theirs",
                r * 100.0
            );
        }
        if let (Some(live), Some(c)) = (self.mean_live_peers, self.churn_events) {
            let _ = writeln!(
                s,
                "  churn         {:.0} peers up on average; {} crashes, {} leaves, {} joins",
                live, c.crashes, c.leaves, c.joins
            );
        }
        if let Some(d) = &self.durability {
            let _ = writeln!(
                s,
                "  files         {} of {} MiB pinned ×{}, {} placed; after {:.1} days: {} lost, {} unavailable at the end",
                d.files,
                d.file_bytes >> 20,
                d.replicas,
                d.placed,
                d.days,
                d.lost,
                d.unavailable_at_end
            );
            let _ = writeln!(
                s,
                "                without a live copy: mean {:.2}, max {}; under-replicated: mean {:.1}",
                d.unavailable_mean, d.unavailable_max, d.under_replicated_mean
            );
            let _ = writeln!(
                s,
                "  repair        {:.1} MiB per peer per day (most on one peer {:.1} MiB/day); {} permanent departures",
                d.repair_bytes_per_peer_day / 1048576.0,
                d.repair_bytes_max_peer_day / 1048576.0,
                d.permanent_departures
            );
            let _ = writeln!(
                s,
                "  spread        pinned copies per live peer: max {}, mean {:.2}, max/mean {:.2}",
                d.spread_max, d.spread_mean, d.spread_ratio
            );
            let quota = d.quota_bytes.map_or("no quota".to_string(), |q| {
                format!("quota {:.0} MiB", q as f64 / 1048576.0)
            });
            let _ = writeln!(
                s,
                "  disks         copies per live peer, pinned or released: max {}, mean {:.2} ({quota})",
                d.stored_max, d.stored_mean
            );
            let c = &d.counters;
            let _ = writeln!(
                s,
                "  duties        {} fetches ({} done, {} without provider, {} cut off), {} hand-offs, {} released ({} dropped for room, {} refused), {} membership lookups",
                c.fetches,
                c.fetched,
                c.no_provider,
                c.broken_transfers,
                c.handoffs,
                c.released,
                c.evicted,
                c.refused,
                c.membership_lookups
            );
        }
        if let Some(p) = self.partition_success {
            let _ = writeln!(
                s,
                "  partition     success before {:.3}%, during {:.3}%, after heal {:.3}%",
                p.before * 100.0,
                p.during * 100.0,
                p.after * 100.0
            );
            match self.reconverge_s {
                Some(r) => {
                    let _ = writeln!(s, "  reconverged   {r:.0} s after the heal");
                }
                None => {
                    let _ = writeln!(s, "  reconverged   not within the run");
                }
            }
        }
        let _ = writeln!(
            s,
            "  cost          {} events in {:.1} s wall ({:.0} events/s), {:.1} s simulated, peak RSS {:.0} MiB ({} B/peer)",
            self.events, self.wall_s, self.events_per_s, self.sim_time_s, self.peak_rss_mb, self.memory_bytes_per_peer
        );
        let _ = writeln!(s, "  trace hash    {}", self.trace_hash);
        if let Some(note) = &self.note {
            let _ = writeln!(s, "  note          {note}");
        }
        s
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Success per window of lookup start time; about 100 windows over the run,
/// at least 1 s each.
fn timeline(lookups: &[&LookupOutcome]) -> Vec<(f64, f64, usize)> {
    let (Some(first), Some(last)) = (
        lookups.iter().map(|l| l.start_s).min_by(f64::total_cmp),
        lookups.iter().map(|l| l.start_s).max_by(f64::total_cmp),
    ) else {
        return Vec::new();
    };
    let width = ((last - first) / 100.0).max(1.0);
    let mut windows: Vec<(usize, usize)> = vec![(0, 0); ((last - first) / width) as usize + 1];
    for l in lookups {
        let w = ((l.start_s - first) / width) as usize;
        windows[w].0 += usize::from(l.success);
        windows[w].1 += 1;
    }
    windows
        .into_iter()
        .enumerate()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(i, (ok, n))| (first + i as f64 * width, ok as f64 / n as f64, n))
        .collect()
}

/// Peak resident set size of this process (VmHWM), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:")
}

/// Resident set size of this process now (VmRSS), 0 where unknown.
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:")
}

fn proc_status_kb(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
