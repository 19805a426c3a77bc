//! The network model: latency from coordinates, jitter, loss, duplication,
//! partitions, and each peer's clock drift.

use std::time::Duration;

use shoal_overlay::Rng;

/// Which kind of network the swarm runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// One building: 0.1–0.6 ms one way.
    Lan,
    /// The internet: peers on a 2-D map, 5–150 ms one way.
    Wan,
}

/// Settings of the network model.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// Fixed one-way delay added to every message.
    pub base_latency: Duration,
    /// One-way delay across the whole map (coordinates span a unit square).
    pub span_latency: Duration,
    /// Mean of the exponentially distributed extra delay, as a fraction of
    /// the path's delay.
    pub jitter: f64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplication: f64,
    /// Largest clock drift of a peer, in parts per million (drawn uniformly
    /// from ±this).
    pub max_drift_ppm: i64,
    /// Largest clock offset of a peer (drawn uniformly from ±this).
    pub max_clock_offset: Duration,
}

impl NetConfig {
    /// The settings of a preset.
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Lan => NetConfig {
                base_latency: Duration::from_micros(100),
                span_latency: Duration::from_micros(500),
                jitter: 0.1,
                loss: 0.0,
                duplication: 0.0,
                max_drift_ppm: 100,
                max_clock_offset: Duration::from_millis(50),
            },
            Preset::Wan => NetConfig {
                base_latency: Duration::from_millis(5),
                span_latency: Duration::from_millis(145),
                jitter: 0.1,
                loss: 0.0,
                duplication: 0.0,
                max_drift_ppm: 100,
                max_clock_offset: Duration::from_millis(500),
            },
        }
    }
}

/// A peer's place in the network and on its own clock.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Placement {
    pub(crate) x: f32,
    pub(crate) y: f32,
    pub(crate) drift_ppm: i32,
    pub(crate) offset_us: i32,
    /// Partition group; messages between groups follow the partition rules.
    pub(crate) group: u8,
}

/// What happens to messages between partition groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Partition {
    /// Every group reaches every other.
    None,
    /// Groups cannot reach each other in either direction.
    Symmetric,
    /// Messages from group 0 to group 1 are lost; the other way works.
    OneWay,
}

/// The network: draws delays and decides what gets through.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Network {
    pub(crate) config: NetConfig,
    pub(crate) partition: Partition,
    rng: Rng,
}

impl Network {
    pub(crate) fn new(config: NetConfig, seed: u64) -> Self {
        Network {
            config,
            partition: Partition::None,
            rng: Rng::derive(seed, u64::MAX),
        }
    }

    /// A new peer's coordinates and clock error.
    pub(crate) fn place(&mut self) -> Placement {
        let drift = self.config.max_drift_ppm;
        let offset = i64::try_from(self.config.max_clock_offset.as_micros()).unwrap_or(i64::MAX / 4);
        Placement {
            x: self.rng.unit_f64() as f32,
            y: self.rng.unit_f64() as f32,
            drift_ppm: (self.rng.below((2 * drift + 1) as u64) as i64 - drift) as i32,
            offset_us: (self.rng.below((2 * offset + 1) as u64) as i64 - offset) as i32,
            group: 0,
        }
    }

    /// How many copies of a message from `a` to `b` arrive, and after what
    /// delays (none: lost).
    pub(crate) fn transmit(&mut self, a: &Placement, b: &Placement) -> [Option<Duration>; 2] {
        let blocked = match self.partition {
            Partition::None => false,
            Partition::Symmetric => a.group != b.group,
            Partition::OneWay => a.group == 0 && b.group == 1,
        };
        if blocked || self.rng.chance(self.config.loss) {
            return [None, None];
        }
        let first = Some(self.delay(a, b));
        let second = if self.rng.chance(self.config.duplication) {
            Some(self.delay(a, b))
        } else {
            None
        };
        [first, second]
    }

    /// The one-way delay between two places, without jitter.
    pub(crate) fn path_delay(&self, a: &Placement, b: &Placement) -> Duration {
        let (dx, dy) = (f64::from(a.x - b.x), f64::from(a.y - b.y));
        let distance = (dx * dx + dy * dy).sqrt() / std::f64::consts::SQRT_2;
        Duration::from_secs_f64(
            self.config.base_latency.as_secs_f64() + distance * self.config.span_latency.as_secs_f64(),
        )
    }

    fn delay(&mut self, a: &Placement, b: &Placement) -> Duration {
        let path = self.path_delay(a, b).as_secs_f64();
        // Exponential jitter by inversion: -ln(U) * mean.
        let u = self.rng.unit_f64().max(1e-12);
        let extra = -u.ln() * self.config.jitter * path;
        Duration::from_secs_f64(path + extra)
    }
}

/// Converts between virtual time and a peer's drifting clock, in µs.
pub(crate) fn to_local(virtual_us: u64, p: &Placement) -> u64 {
    let v = i128::from(virtual_us);
    let local = v + v * i128::from(p.drift_ppm) / 1_000_000 + i128::from(p.offset_us) + OFFSET_BIAS;
    u64::try_from(local.max(0)).unwrap_or(u64::MAX)
}

/// The first virtual instant at which the peer's clock reads `local_us` or more.
pub(crate) fn to_virtual(local_us: u64, p: &Placement) -> u64 {
    let shifted = i128::from(local_us) - i128::from(p.offset_us) - OFFSET_BIAS;
    let scale = 1_000_000 + i128::from(p.drift_ppm);
    // The estimate may be off by a microsecond either way (to_local rounds);
    // start just below it and step to the first instant that reads late enough.
    let mut v = ((shifted * 1_000_000).div_euclid(scale) - 2).max(0);
    while to_local(v as u64, p) < local_us {
        v += 1;
    }
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Every local clock starts an hour in, so that negative offsets stay positive.
const OFFSET_BIAS: i128 = 3_600_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_conversion_round_trips_and_never_fires_early() {
        let mut net = Network::new(NetConfig::preset(Preset::Wan), 3);
        for _ in 0..200 {
            let p = net.place();
            for v in [0u64, 1, 999_999, 3_600_000_000, 21_600_000_123] {
                let local = to_local(v, &p);
                let back = to_virtual(local, &p);
                assert!(back <= v, "drift {} offset {}", p.drift_ppm, p.offset_us);
                assert!(to_local(back, &p) >= local);
            }
        }
    }

    #[test]
    fn partitions_block_the_right_directions() {
        let mut net = Network::new(NetConfig::preset(Preset::Lan), 1);
        let mut a = net.place();
        let mut b = net.place();
        a.group = 0;
        b.group = 1;
        assert!(net.transmit(&a, &b)[0].is_some());
        net.partition = Partition::Symmetric;
        assert!(net.transmit(&a, &b)[0].is_none() && net.transmit(&b, &a)[0].is_none());
        net.partition = Partition::OneWay;
        assert!(net.transmit(&a, &b)[0].is_none() && net.transmit(&b, &a)[0].is_some());
    }
}
