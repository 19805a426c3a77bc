//! The harness: a handful of overlay cores driven against each other in
//! virtual time (see the test crate's doc), and the helpers the tests
//! share.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signature, SigningKey, Verifier as _, VerifyingKey};
use shoal_overlay::{
    Config, Event, Instant, Key, Mode, Overlay, PeerInfo, QueryId, Request, RequestId, Response, Signer, ValueRecord,
    Verifier,
};

#[derive(Debug)]
pub(crate) struct Ed25519(SigningKey, Vec<u8>);

impl Ed25519 {
    pub(crate) fn new(index: u32) -> Self {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&index.to_be_bytes());
        seed[4] = 0x5a;
        let key = SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes().to_vec();
        Ed25519(key, public)
    }
}

impl Signer for Ed25519 {
    fn public_key(&self) -> &[u8] {
        &self.1
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        self.0.sign(message).to_bytes().to_vec()
    }
}

pub(crate) fn ed25519_verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(public), Ok(signature)) = (<[u8; 32]>::try_from(public_key), <[u8; 64]>::try_from(signature)) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&public) else {
        return false;
    };
    key.verify(message, &Signature::from_bytes(&signature)).is_ok()
}

pub(crate) const LATENCY: Duration = Duration::from_millis(5);

pub(crate) enum Message {
    Request {
        from: u32,
        id: RequestId,
        mode: Mode,
        request: Request<u32>,
    },
    Response {
        id: RequestId,
        response: Response<u32>,
        /// Who answered.
        by: u32,
    },
}

pub(crate) struct Swarm {
    pub(crate) config: Arc<Config>,
    pub(crate) now: Instant,
    pub(crate) peers: Vec<Overlay<u32>>,
    pub(crate) down: BTreeSet<u32>,
    pub(crate) queue: BTreeMap<(Instant, u64), (u32, Message)>,
    pub(crate) seq: u64,
    pub(crate) events: Vec<(u32, Event<u32>)>,
    /// Requests each peer has sent.
    pub(crate) sent: Vec<u64>,
    /// Requests from one peer to another sent and not yet answered.
    pub(crate) open: BTreeMap<(u32, u32), usize>,
    /// When set, a request arriving while more than this many from the same
    /// sender are open is dropped unanswered (the sender times out), as
    /// libp2p's request-response drops streams past 100 per connection.
    pub(crate) capacity: Option<usize>,
    /// Requests dropped for want of capacity.
    pub(crate) dropped: u64,
}

impl Swarm {
    pub(crate) fn new(config: Config) -> Self {
        Swarm {
            config: Arc::new(config),
            now: Instant::ZERO,
            peers: Vec::new(),
            down: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            sent: Vec::new(),
            open: BTreeMap::new(),
            capacity: None,
            dropped: 0,
        }
    }

    pub(crate) fn config() -> Config {
        let mut config = Config::new(Verifier(ed25519_verify));
        config.request_timeout = Duration::from_millis(200);
        config
    }

    pub(crate) fn spawn(&mut self, mode: Mode) -> u32 {
        let index = self.peers.len() as u32;
        let core = self.core(index, mode);
        self.peers.push(core);
        self.sent.push(0);
        index
    }

    /// A fresh core for peer `index`: its identity, no state.
    pub(crate) fn core(&self, index: u32, mode: Mode) -> Overlay<u32> {
        let signer = Ed25519::new(index);
        let local = PeerInfo::new(Key::of_public_key(signer.public_key()), index);
        let mut config = (*self.config).clone();
        config.mode = mode;
        Overlay::new(Arc::new(config), local, Box::new(signer), u64::from(index), self.now).unwrap()
    }

    /// Restarts peer `index` with empty state and joins it through `seeds`;
    /// returns the requests its join sent.
    pub(crate) fn rejoin(&mut self, index: u32, seeds: Vec<PeerInfo<u32>>) -> u64 {
        self.peers[index as usize] = self.core(index, Mode::Server);
        let before = self.sent[index as usize];
        let now = self.now;
        self.peers[index as usize].bootstrap(now, seeds).unwrap();
        self.flush(index);
        self.drive_until(200_000, |s| {
            s.events
                .iter()
                .any(|(i, e)| *i == index && matches!(e, Event::Bootstrapped { .. }))
        });
        self.events.clear();
        self.sent[index as usize] - before
    }

    pub(crate) fn info(&self, index: u32) -> PeerInfo<u32> {
        self.peers[index as usize].local().clone()
    }

    pub(crate) fn flush(&mut self, index: u32) {
        let core = &mut self.peers[index as usize];
        let mode = core.config().mode;
        while let Some(t) = core.poll_transmit() {
            self.seq += 1;
            self.sent[index as usize] += 1;
            *self.open.entry((index, t.to.addr)).or_default() += 1;
            let message = Message::Request {
                from: index,
                id: t.id,
                mode,
                request: t.request,
            };
            self.queue.insert((self.now + LATENCY, self.seq), (t.to.addr, message));
        }
        while let Some(event) = core.poll_event() {
            self.events.push((index, event));
        }
    }

    pub(crate) fn next_timer(&self) -> Option<(Instant, u32)> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.down.contains(&(*i as u32)))
            .filter_map(|(i, p)| p.poll_timeout().map(|t| (t, i as u32)))
            .min()
    }

    /// Delivers the next message or fires the next timer. False when idle.
    pub(crate) fn step(&mut self) -> bool {
        let next_message = self.queue.keys().next().map(|&(t, _)| t);
        let next_timer = self.next_timer();
        match (next_message, next_timer) {
            (Some(tm), timer) if timer.is_none_or(|(tt, _)| tm <= tt) => {
                let (key, (to, message)) = self.queue.pop_first().unwrap();
                self.now = key.0;
                self.deliver(to, message);
            }
            (_, Some((t, index))) => {
                self.now = self.now.max(t);
                self.peers[index as usize].handle_timeout(self.now);
                self.flush(index);
            }
            _ => return false,
        }
        true
    }

    pub(crate) fn deliver(&mut self, to: u32, message: Message) {
        let pair = match &message {
            Message::Request { from, .. } => (*from, to),
            Message::Response { by, .. } => (to, *by),
        };
        let open = self.open.entry(pair).or_default();
        let over = self.capacity.is_some_and(|c| *open > c);
        let lost = self.down.contains(&to) || (over && matches!(message, Message::Request { .. }));
        if lost || matches!(message, Message::Response { .. }) {
            *open -= 1;
        }
        if lost {
            self.dropped += u64::from(!self.down.contains(&to));
            return; // the sender will time out
        }
        match message {
            Message::Request {
                from,
                id,
                mode,
                request,
            } => {
                let sender = self.info(from);
                let response = self.peers[to as usize].handle_request(self.now, sender, mode, request);
                self.flush(to);
                self.seq += 1;
                self.queue.insert(
                    (self.now + LATENCY, self.seq),
                    (from, Message::Response { id, response, by: to }),
                );
            }
            Message::Response { id, response, .. } => {
                self.peers[to as usize].handle_response(self.now, id, response);
                self.flush(to);
            }
        }
    }

    /// Runs until `done` holds, failing if it takes more than `limit` steps.
    pub(crate) fn drive_until(&mut self, limit: usize, mut done: impl FnMut(&Swarm) -> bool) {
        for _ in 0..limit {
            if done(self) {
                return;
            }
            assert!(self.step(), "swarm went idle before the condition held");
        }
        panic!("no progress after {limit} steps: livelock");
    }

    /// Runs for `duration` of virtual time.
    pub(crate) fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        for _ in 0..10_000_000 {
            let next_message = self.queue.keys().next().map(|&(t, _)| t);
            let next_timer = self.next_timer().map(|(t, _)| t);
            let next = next_message.into_iter().chain(next_timer).min();
            if next.is_none_or(|t| t > end) {
                self.now = end;
                return;
            }
            self.step();
        }
        panic!("run_for did not reach its end: livelock");
    }

    /// Runs until an event matching `wanted` appears, and takes it.
    pub(crate) fn await_event(&mut self, wanted: impl Fn(&Event<u32>) -> bool) -> Event<u32> {
        self.drive_until(100_000, |s| s.events.iter().any(|(_, e)| wanted(e)));
        let (_, event) = self.take_event(|(_, e)| wanted(e)).unwrap();
        event
    }

    /// Runs `command` on peer `index` and drives the swarm until the put
    /// (or announcement) it started has ended.
    pub(crate) fn until_put(&mut self, index: u32, command: impl FnOnce(&mut Overlay<u32>, Instant) -> QueryId) {
        let now = self.now;
        let query = command(&mut self.peers[index as usize], now);
        self.flush(index);
        self.await_event(|e| matches!(e, Event::Put { query: q, .. } if *q == query));
    }

    pub(crate) fn take_event(
        &mut self,
        mut matches: impl FnMut(&(u32, Event<u32>)) -> bool,
    ) -> Option<(u32, Event<u32>)> {
        let pos = self.events.iter().position(&mut matches)?;
        Some(self.events.remove(pos))
    }

    /// Spawns `n` servers, each joining through peer 0, one after another.
    pub(crate) fn join(n: u32) -> Swarm {
        let mut swarm = Swarm::new(Swarm::config());
        let first = swarm.spawn(Mode::Server);
        for _ in 1..n {
            let index = swarm.spawn(Mode::Server);
            let seed = swarm.info(first);
            let now = swarm.now;
            swarm.peers[index as usize].bootstrap(now, vec![seed]).unwrap();
            swarm.flush(index);
            swarm.drive_until(200_000, |s| {
                s.events
                    .iter()
                    .any(|(i, e)| *i == index && matches!(e, Event::Bootstrapped { .. }))
            });
        }
        swarm.events.clear();
        swarm
    }

    pub(crate) fn true_closest(&self, key: &Key, exclude: u32) -> Vec<u32> {
        let mut live: Vec<u32> = (0..self.peers.len() as u32)
            .filter(|i| {
                *i != exclude && !self.down.contains(i) && self.peers[*i as usize].config().mode == Mode::Server
            })
            .collect();
        live.sort_by_key(|i| self.peers[*i as usize].local().key.distance(key));
        live
    }

    pub(crate) fn holders(&self, key: &Key) -> Vec<u32> {
        (0..self.peers.len() as u32)
            .filter(|i| !self.down.contains(i) && self.peers[*i as usize].record_store().value(key, self.now).is_some())
            .collect()
    }
}

pub(crate) fn target(n: u8) -> Key {
    Key::of_content(&[n; 3])
}

pub(crate) fn put(swarm: &mut Swarm, from: u32, key: Key, value: &[u8]) -> usize {
    let now = swarm.now;
    let query = swarm.peers[from as usize].put_value(now, key, value.to_vec()).unwrap();
    swarm.flush(from);
    let event = swarm.await_event(|e| matches!(e, Event::Put { query: q, .. } if *q == query));
    let Event::Put { stored, .. } = event else {
        unreachable!()
    };
    stored
}

pub(crate) fn get(swarm: &mut Swarm, from: u32, key: Key) -> Option<ValueRecord> {
    let now = swarm.now;
    let query = swarm.peers[from as usize].get_value(now, key).unwrap();
    swarm.flush(from);
    let event = swarm.await_event(|e| matches!(e, Event::GotValue { query: q, .. } if *q == query));
    let Event::GotValue { record, .. } = event else {
        unreachable!()
    };
    record
}

pub(crate) fn provide_many(swarm: &mut Swarm, from: u32, keys: Vec<Key>) -> Event<u32> {
    let now = swarm.now;
    let query = swarm.peers[from as usize].provide_many(now, keys).unwrap();
    swarm.flush(from);
    swarm.await_event(|e| matches!(e, Event::ProvidedMany { query: q, .. } if *q == query))
}

/// Swaps peer `index` for a copy of itself written out and read back, as
/// the simulator's checkpoints do; the copy is resumed with `signer_of`'s
/// key and `config`.
pub(crate) fn save_and_resume(swarm: &mut Swarm, index: u32, signer_of: u32, config: Config) -> Result<(), String> {
    let mut saved = Vec::new();
    ciborium::into_writer(&swarm.peers[index as usize], &mut saved).map_err(|e| e.to_string())?;
    let mut copy: Overlay<u32> = ciborium::from_reader(saved.as_slice()).map_err(|e| e.to_string())?;
    copy.resume(Arc::new(config), Box::new(Ed25519::new(signer_of)))
        .map_err(|e| e.to_string())?;
    swarm.peers[index as usize] = copy;
    Ok(())
}

/// `n` value records at distinct keys, signed by a publisher outside the
/// swarm, living a day.
pub(crate) fn many_records(swarm: &Swarm, n: u32) -> Vec<ValueRecord> {
    let publisher = Ed25519::new(u32::MAX);
    let expires = swarm.now + Duration::from_secs(24 * 3600);
    (0..n)
        .map(|i| ValueRecord::sign(Key::of_content(&i.to_be_bytes()), vec![7; 64], 1, expires, &publisher))
        .collect()
}

/// Asserts that the three live peers nearest each record's key (leaving
/// out `exclude`) hold it.
pub(crate) fn homes_hold(swarm: &Swarm, records: &[ValueRecord], exclude: u32) {
    for record in records {
        let home: BTreeSet<u32> = swarm.true_closest(&record.key, exclude)[..3].iter().copied().collect();
        let holders: BTreeSet<u32> = swarm.holders(&record.key).into_iter().collect();
        assert!(home.is_subset(&holders), "home {home:?}, holders {holders:?}");
    }
}
