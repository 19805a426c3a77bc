//! The `devices` scenario (issue 20): one device, its provider's
//! [`DeviceLeases`] (the machine the node runs), and clients that take it
//! (exclusive or shared), hold it for a while renewing every third of a
//! term, and let it go — while links between clients and the provider are
//! cut for seconds at a time, messages are lost or late, and the provider
//! restarts (its leases gone, its last token kept on disk).
//!
//! The oracle, at every step: the provider admits either one exclusive
//! holder or only shared ones; tokens grow with every grant, across
//! restarts; and in a run without faults every client is served in the
//! order it first stood in line (the line is first come, first served).
//! Measured: how long a take waits, p50 and p99.

use shoal_overlay::{Instant, Key, Rng};
use shoal_resources::device::{DeviceAnswer, DeviceLeases, DeviceRequest, TERM};

/// What one run does.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    /// Clients that want the device.
    pub clients: usize,
    /// Share of requests for a shared lease.
    pub shared: f64,
    /// Whether links are cut, messages lost and the provider restarts.
    pub faults: bool,
    /// Seconds simulated.
    pub seconds: u64,
}

/// What a sweep showed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeviceSweep {
    /// Seeds run, from 0.
    pub seeds: u64,
    /// Grants made.
    pub grants: usize,
    /// Steps at which the provider admitted an exclusive holder beside
    /// another holder.
    pub overlaps: usize,
    /// Grants whose token was not above every earlier one.
    pub token_regressions: usize,
    /// Grants out of line order (runs without faults).
    pub out_of_order: usize,
    /// Seconds a take waited: p50.
    pub wait_s_p50: f64,
    /// The same, p99.
    pub wait_s_p99: f64,
    /// The first violation, with its seed.
    pub first_violation: Option<String>,
}

const SECOND: u64 = 1_000_000;
const STEP: u64 = 50_000;

struct Client {
    key: Key,
    /// Shared or exclusive, for the take under way.
    shared: bool,
    /// When it first asked (real µs), while it waits.
    asked: Option<u64>,
    /// Its token and until when it lets go, while it holds.
    holding: Option<(u64, u64)>,
    next_renew: u64,
    /// When it next wants the device.
    next_want: u64,
    /// Cut off from the provider until then.
    cut_until: u64,
}

/// Runs `seeds` seeds.
pub fn devices_sweep(spec: &DeviceSpec, seeds: u64) -> DeviceSweep {
    let mut sweep = DeviceSweep {
        seeds,
        ..DeviceSweep::default()
    };
    let mut waits = Vec::new();
    for seed in 0..seeds {
        run(spec, seed, &mut sweep, &mut waits);
    }
    waits.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if waits.is_empty() {
            0.0
        } else {
            waits[((waits.len() - 1) as f64 * p).round() as usize]
        }
    };
    sweep.wait_s_p50 = at(0.5);
    sweep.wait_s_p99 = at(0.99);
    sweep
}

fn run(spec: &DeviceSpec, seed: u64, sweep: &mut DeviceSweep, waits: &mut Vec<f64>) {
    let mut rng = Rng::derive(seed, 21);
    let mut provider = DeviceLeases::new(0, TERM);
    let mut clients: Vec<Client> = (0..spec.clients.max(1))
        .map(|_| Client {
            key: rng.key(),
            shared: false,
            asked: None,
            holding: None,
            next_renew: 0,
            next_want: rng.below(2 * SECOND),
            cut_until: 0,
        })
        .collect();
    let mut last_token = 0;
    // Each client's last grant: taking it again (its release lost) is the
    // same grant, not a new one.
    let mut granted: Vec<u64> = vec![0; clients.len()];
    // Line order as the provider first queued each waiter (no faults).
    let mut queued_order: Vec<usize> = Vec::new();
    let violation = |sweep: &mut DeviceSweep, what: String| {
        sweep.first_violation.get_or_insert(format!("seed {seed}: {what}"));
    };
    let lossy = |rng: &mut Rng| spec.faults && rng.chance(0.02);
    let mut now = 0;
    while now < spec.seconds * SECOND {
        now += STEP;
        let at = Instant::from_micros(SECOND + now);
        if spec.faults && rng.chance(0.0005) {
            // The provider restarts: its leases are gone, its token kept.
            provider = DeviceLeases::new(provider.durable(), TERM);
        }
        for i in 0..clients.len() {
            if spec.faults && rng.chance(0.0005) {
                clients[i].cut_until = now + SECOND + rng.below(30 * SECOND);
            }
            let reach = clients[i].cut_until <= now;
            let c = &mut clients[i];
            if let Some((token, until)) = c.holding {
                if now >= until {
                    if reach && !lossy(&mut rng) {
                        provider.handle(at, c.key, DeviceRequest::Release { token });
                    }
                    c.holding = None;
                    c.next_want = now + rng.below(3 * SECOND);
                } else if now >= c.next_renew {
                    c.next_renew = now + TERM.as_micros() as u64 / 3;
                    if reach
                        && !lossy(&mut rng)
                        && provider.handle(at, c.key, DeviceRequest::Renew { token }) == DeviceAnswer::Lost
                    {
                        c.holding = None;
                        c.next_want = now + rng.below(3 * SECOND);
                    }
                }
                continue;
            }
            if now < c.next_want || !reach || lossy(&mut rng) {
                continue;
            }
            if c.asked.is_none() {
                c.shared = rng.chance(spec.shared);
            }
            // Asks again every half second while in line (a waiter keeps
            // its place within WAITER_TTL).
            if c.asked.is_some_and(|a| (now - a) % (SECOND / 2) >= STEP) {
                continue;
            }
            let answer = provider.handle(
                at,
                c.key,
                DeviceRequest::Take {
                    shared: c.shared,
                    wait: true,
                },
            );
            match answer {
                DeviceAnswer::Granted { token, .. } => {
                    sweep.grants += 1;
                    let repeat = token == granted[i];
                    if !repeat && token <= last_token {
                        sweep.token_regressions += 1;
                        violation(sweep, format!("token {token} after {last_token}"));
                    }
                    last_token = last_token.max(token);
                    granted[i] = token;
                    waits.push(c.asked.map_or(0.0, |a| (now - a) as f64 / 1e6));
                    if !spec.faults && c.asked.is_some() {
                        if queued_order.first() != Some(&i) {
                            sweep.out_of_order += 1;
                            violation(sweep, format!("client {i} served before {:?}", queued_order.first()));
                        }
                        queued_order.retain(|q| *q != i);
                    }
                    c.asked = None;
                    c.holding = Some((token, now + SECOND / 2 + rng.below(20 * SECOND)));
                    c.next_renew = now + TERM.as_micros() as u64 / 3;
                }
                DeviceAnswer::Queued { .. } if c.asked.is_none() => {
                    c.asked = Some(now);
                    queued_order.push(i);
                }
                _ => {}
            }
        }
        // The oracle: one exclusive holder, or shared ones only.
        let holders = provider.holders(at);
        if holders.len() > 1 && holders.iter().any(|h| !h.shared) {
            sweep.overlaps += 1;
            violation(
                sweep,
                format!("{} holders, one exclusive, at {:.2} s", holders.len(), now as f64 / 1e6),
            );
        }
    }
}
