//! Devices: a printer's port, a serial console, a GPU box's API — a thing
//! one machine physically has and others use through it. The machine that
//! has it is its *provider*: it alone can enforce who uses it, so it alone
//! grants its leases ([`DeviceLeases`]), and its adapter checks the lease's
//! token on every connection and every frame ([`DeviceLeases::admits`]).
//! A holder that was cut off may believe it still holds the device; the
//! provider refuses its traffic once its term has run out here, and the
//! next in line gets the device.
//!
//! A device is found by name at `Key::of_name("device", name)` and by class
//! at `Key::of_name("device class", class)` (the providers of its class).
//!
//! A lease is exclusive, or shared with other shared holders. Waiters stand
//! in one line, first come first served: a shared request joins shared
//! holders only if nobody waits before it, so a waiting exclusive request
//! is not starved by a stream of shared ones. A waiter keeps its place by
//! asking again within [`WAITER_TTL`]; a holder keeps the lease by renewing
//! within its term. The token grows with every grant and is kept on the
//! provider's disk ([`DeviceLeases::durable`]) before a grant is answered,
//! so a token from before a restart is never handed out again.
//!
//! Sans-IO: times are the provider's clock, passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_overlay::{Instant, Key};

/// The longest device or class name, bytes.
pub const MAX_NAME: usize = 100;
/// Waiters a device keeps in line, at most.
pub const MAX_WAITERS: usize = 256;
/// How long a waiter keeps its place without asking again.
pub const WAITER_TTL: Duration = Duration::from_secs(5);
/// A lease's term: the holder renews every third of it.
pub const TERM: Duration = Duration::from_secs(10);

/// The key of device `name`.
pub fn device_key(name: &str) -> Key {
    Key::of_name("device", name.as_bytes())
}

/// The key of device class `class` (its devices' providers provide it).
pub fn class_key(class: &str) -> Key {
    Key::of_name("device class", class.as_bytes())
}

/// Checks a device or class name: 1 to [`MAX_NAME`] bytes of letters,
/// digits, `-`, `_`, `.`, `/` and `:`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a {what} name has 1 to {MAX_NAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':')))
    {
        return Err(format!(
            "a {what} name holds letters, digits and - _ . / : only, not {c:?}"
        ));
    }
    Ok(())
}

/// What a peer asks a device's provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceRequest {
    /// Take the device (or keep a place in line): exclusive unless
    /// `shared`. With `wait` false, a busy device answers
    /// [`DeviceAnswer::Busy`] and no place is kept.
    Take {
        /// Shared with other shared holders.
        shared: bool,
        /// Stand in line if it is busy.
        wait: bool,
    },
    /// The holder of `token` goes on.
    Renew {
        /// Its token.
        token: u64,
    },
    /// The holder of `token` lets go, or a waiter leaves the line
    /// (`token` 0).
    Release {
        /// Its token (0: a waiter).
        token: u64,
    },
}

/// Who holds a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The holder.
    pub peer: Key,
    /// Its token.
    pub token: u64,
    /// Whether it shares the device.
    pub shared: bool,
}

/// The provider's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceAnswer {
    /// Held: renew within `term_ms`, every third of it.
    Granted {
        /// The lease's token.
        token: u64,
        /// Its term, ms.
        term_ms: u64,
    },
    /// In line, `ahead` before it; who holds it now.
    Queued {
        /// Waiters ahead.
        ahead: u64,
        /// The holders.
        holders: Vec<Holding>,
    },
    /// Busy (asked not to wait): who holds it.
    Busy {
        /// The holders.
        holders: Vec<Holding>,
    },
    /// Renewed or released.
    Ok,
    /// That token holds nothing here any more (its term ran out, or the
    /// provider restarted): the lease is lost.
    Lost,
    /// The line is full.
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Waiter {
    peer: Key,
    shared: bool,
    until: Instant,
}

/// One device's leases at its provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLeases {
    /// The last token handed out (durable).
    token: u64,
    /// Holders by token, each until when (this provider's clock).
    holders: BTreeMap<u64, (Holding, Instant)>,
    line: VecDeque<Waiter>,
    term: Duration,
}

impl DeviceLeases {
    /// A device whose last token handed out was `token` (0 for a new one;
    /// after a restart, the one [`durable`](Self::durable) kept): nobody
    /// holds it.
    pub fn new(token: u64, term: Duration) -> Self {
        DeviceLeases {
            token,
            holders: BTreeMap::new(),
            line: VecDeque::new(),
            term,
        }
    }

    /// What must be on disk before an answer that granted goes out.
    pub fn durable(&self) -> u64 {
        self.token
    }

    fn expire(&mut self, now: Instant) {
        self.holders.retain(|_, (_, until)| now < *until);
        self.line.retain(|w| now < w.until);
    }

    /// The holders at `now`.
    pub fn holders(&mut self, now: Instant) -> Vec<Holding> {
        self.expire(now);
        self.holders.values().map(|(h, _)| h.clone()).collect()
    }

    /// Waiters in line at `now`.
    pub fn waiting(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.line.len()
    }

    /// Answers `request` from `peer` at `now`.
    pub fn handle(&mut self, now: Instant, peer: Key, request: DeviceRequest) -> DeviceAnswer {
        self.expire(now);
        match request {
            DeviceRequest::Take { shared, wait } => self.take(now, peer, shared, wait),
            DeviceRequest::Renew { token } => match self.holders.get_mut(&token) {
                Some((h, until)) if h.peer == peer => {
                    *until = now + self.term;
                    DeviceAnswer::Ok
                }
                _ => DeviceAnswer::Lost,
            },
            DeviceRequest::Release { token } => {
                if token == 0 {
                    self.line.retain(|w| w.peer != peer);
                } else if self.holders.get(&token).is_some_and(|(h, _)| h.peer == peer) {
                    self.holders.remove(&token);
                }
                DeviceAnswer::Ok
            }
        }
    }

    fn take(&mut self, now: Instant, peer: Key, shared: bool, wait: bool) -> DeviceAnswer {
        // Already holding (a repeated ask): the same grant.
        if let Some((h, _)) = self
            .holders
            .values()
            .find(|(h, _)| h.peer == peer && h.shared == shared)
        {
            return DeviceAnswer::Granted {
                token: h.token,
                term_ms: self.term.as_millis() as u64,
            };
        }
        let place = self.line.iter().position(|w| w.peer == peer);
        let first = place.is_none_or(|p| p == 0) && (place.is_some() || self.line.is_empty());
        let free = self.holders.is_empty() || (shared && self.holders.values().all(|(h, _)| h.shared));
        if free && first {
            if place.is_some() {
                self.line.pop_front();
            }
            self.token += 1;
            let holding = Holding {
                peer,
                token: self.token,
                shared,
            };
            self.holders.insert(self.token, (holding, now + self.term));
            return DeviceAnswer::Granted {
                token: self.token,
                term_ms: self.term.as_millis() as u64,
            };
        }
        let holders: Vec<Holding> = self.holders.values().map(|(h, _)| h.clone()).collect();
        if !wait {
            if place.is_some() {
                self.line.retain(|w| w.peer != peer);
            }
            return DeviceAnswer::Busy { holders };
        }
        let ahead = match place {
            Some(p) => {
                self.line[p].until = now + WAITER_TTL;
                self.line[p].shared = shared;
                p
            }
            None => {
                if self.line.len() >= MAX_WAITERS {
                    return DeviceAnswer::Full;
                }
                self.line.push_back(Waiter {
                    peer,
                    shared,
                    until: now + WAITER_TTL,
                });
                self.line.len() - 1
            }
        };
        DeviceAnswer::Queued {
            ahead: ahead as u64,
            holders,
        }
    }

    /// Whether traffic carrying `token` may reach the device at `now`: its
    /// holder's term has not run out here. The adapter asks on every
    /// connection and every frame.
    pub fn admits(&mut self, now: Instant, token: u64) -> bool {
        self.expire(now);
        self.holders.contains_key(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Key {
        Key::from_bytes([i; 32])
    }

    fn at(ms: u64) -> Instant {
        Instant::from_micros(1_000_000 + ms * 1000)
    }

    fn token(a: DeviceAnswer) -> u64 {
        match a {
            DeviceAnswer::Granted { token, .. } => token,
            other => panic!("not granted: {other:?}"),
        }
    }

    const TAKE: DeviceRequest = DeviceRequest::Take {
        shared: false,
        wait: true,
    };

    #[test]
    fn waiters_get_a_device_in_order_and_a_stale_token_is_refused() {
        let mut d = DeviceLeases::new(0, TERM);
        let a = token(d.handle(at(0), key(1), TAKE));
        assert!(d.admits(at(1), a));
        assert_eq!(
            d.handle(at(2), key(2), TAKE),
            DeviceAnswer::Queued {
                ahead: 0,
                holders: vec![Holding {
                    peer: key(1),
                    token: a,
                    shared: false
                }]
            }
        );
        assert!(matches!(
            d.handle(at(3), key(3), TAKE),
            DeviceAnswer::Queued { ahead: 1, .. }
        ));
        // Without waiting: busy, naming the holder, and no place kept.
        assert!(matches!(
            d.handle(at(4), key(4), DeviceRequest::Take { shared: false, wait: false }),
            DeviceAnswer::Busy { holders } if holders[0].peer == key(1)
        ));
        // The third may not jump the line once the device is free.
        assert_eq!(
            d.handle(at(5), key(1), DeviceRequest::Release { token: a }),
            DeviceAnswer::Ok
        );
        assert!(!d.admits(at(5), a), "a released token is refused");
        assert!(matches!(
            d.handle(at(6), key(3), TAKE),
            DeviceAnswer::Queued { ahead: 1, .. }
        ));
        let b = token(d.handle(at(7), key(2), TAKE));
        assert!(b > a);
        // The holder that stops renewing loses it after its term, and its
        // token is refused from then on; the next in line gets it.
        assert!(matches!(
            d.handle(at(8), key(3), TAKE),
            DeviceAnswer::Queued { ahead: 0, .. }
        ));
        let later = at(7) + TERM;
        assert!(d.admits(later - Duration::from_millis(1), b));
        assert!(!d.admits(later, b));
        assert_eq!(
            d.handle(later, key(2), DeviceRequest::Renew { token: b }),
            DeviceAnswer::Lost
        );
        // The third kept its place by asking again within WAITER_TTL.
        let mut t = at(8);
        while t < later {
            t = t + Duration::from_secs(2);
            let _ = d.handle(t, key(3), TAKE);
        }
        assert!(token(d.handle(t, key(3), TAKE)) > b);
    }

    #[test]
    fn shared_holders_share_and_an_exclusive_waiter_is_not_starved() {
        let mut d = DeviceLeases::new(0, TERM);
        let shared = DeviceRequest::Take {
            shared: true,
            wait: true,
        };
        let s1 = token(d.handle(at(0), key(1), shared.clone()));
        let s2 = token(d.handle(at(1), key(2), shared.clone()));
        assert!(d.admits(at(2), s1) && d.admits(at(2), s2));
        // An exclusive request waits for both; a shared one after it waits
        // behind it.
        assert!(matches!(
            d.handle(at(3), key(3), TAKE),
            DeviceAnswer::Queued { ahead: 0, .. }
        ));
        assert!(matches!(
            d.handle(at(4), key(4), shared.clone()),
            DeviceAnswer::Queued { ahead: 1, .. }
        ));
        d.handle(at(5), key(1), DeviceRequest::Release { token: s1 });
        assert!(matches!(d.handle(at(6), key(3), TAKE), DeviceAnswer::Queued { .. }));
        d.handle(at(7), key(2), DeviceRequest::Release { token: s2 });
        let x = token(d.handle(at(8), key(3), TAKE));
        assert!(matches!(
            d.handle(at(9), key(4), shared),
            DeviceAnswer::Queued { ahead: 0, .. }
        ));
        assert!(x > s2);
    }

    #[test]
    fn tokens_never_repeat_across_a_restart() {
        let mut d = DeviceLeases::new(0, TERM);
        let a = token(d.handle(at(0), key(1), TAKE));
        let kept = d.durable();
        // The provider restarts: nobody holds it, the old token is refused,
        // and the next grant's token is above it.
        let mut again = DeviceLeases::new(kept, TERM);
        assert!(!again.admits(at(1), a));
        assert_eq!(
            again.handle(at(1), key(1), DeviceRequest::Renew { token: a }),
            DeviceAnswer::Lost
        );
        assert!(token(again.handle(at(2), key(2), TAKE)) > a);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("device", "printer-2f").is_ok());
        assert!(check_name("class", "gpu/a100").is_ok());
        assert!(check_name("device", "").is_err());
        assert!(check_name("device", "a b").is_err());
        assert!(check_name("device", &"x".repeat(MAX_NAME + 1)).is_err());
        assert_ne!(device_key("a"), class_key("a"));
    }
}
