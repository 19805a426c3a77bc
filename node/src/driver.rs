//! The driver task: it owns the libp2p swarm and the overlay core, carries
//! the core's transmits over the swarm and the swarm's messages and
//! timers into the core, answers [`DriverCommand`]s from clients, and saves the
//! routing table and the record store as they change.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns};
use shoal_overlay::{Event, Overlay, PeerInfo, QueryId, RequestId, Transmit, ValueRecord, wire};
use tokio::sync::mpsc;

use crate::addr::{MAX_ADDRS_PER_PEER, NodeAddr, key_of_peer};
use crate::client::{DriverCommand, FoundNodes, Provided, Refusal, Reply, now};
use crate::error::NodeError;
use crate::error::error_chain;
use crate::known::KnownPeers;
use crate::saved::SavedRecords;
use crate::swarm::{Behaviour, BehaviourEvent};

/// How often a changed record store is written to disk, at most.
const RECORD_SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// A reply the driver owes once its query ends.
pub(crate) enum Waiting {
    FindNode(Reply<FoundNodes>),
    PutValue(Reply<usize>),
    GetValue(Reply<Option<ValueRecord>>),
    Provide(Reply<Provided>),
    GetProviders(Reply<Vec<PeerInfo<NodeAddr>>>),
    Leave(Reply<()>),
}

pub(crate) struct Driver {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) core: Overlay<NodeAddr>,
    pub(crate) commands: mpsc::Receiver<DriverCommand>,
    pub(crate) waiting: BTreeMap<QueryId, Waiting>,
    pub(crate) outbound: HashMap<OutboundRequestId, RequestId>,
    /// Addresses learned through identify and mDNS, per peer.
    pub(crate) addresses: HashMap<PeerId, Vec<Multiaddr>>,
    pub(crate) listening: Vec<Multiaddr>,
    /// Listeners that have not reported an address yet.
    pub(crate) listeners_starting: Vec<libp2p::core::transport::ListenerId>,
    /// `ready` calls waiting for them.
    pub(crate) ready_waiters: Vec<Reply<Vec<Multiaddr>>>,
    pub(crate) bootstrapped: bool,
    pub(crate) stopping: Option<Reply<()>>,
    /// The data directory's lock, let go when the node stops.
    pub(crate) lock: Option<std::fs::File>,
    /// Routing-table peers, saved for the next start.
    pub(crate) known: KnownPeers,
    pub(crate) known_dirty: bool,
    /// The record store on disk, the store's change count when last saved,
    /// and when.
    pub(crate) saved: SavedRecords,
    pub(crate) saved_changes: u64,
    pub(crate) saved_at: std::time::Instant,
    /// The last inbound connections refused, newest last.
    pub(crate) refusals: std::collections::VecDeque<Refusal>,
}

/// Refusals a node remembers; older ones are only in its log.
const REFUSALS_KEPT: usize = 64;

impl Driver {
    pub(crate) async fn run(mut self) {
        loop {
            let wake = self.core.poll_timeout().map(|t| {
                let wait = t.saturating_since(now());
                tokio::time::Instant::now() + wait
            });
            let sleep = tokio::time::sleep_until(
                wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return, // every client is gone
                },
                () = sleep => {
                    self.core.handle_timeout(now());
                    // Maintenance runs on these wake-ups: a good moment to
                    // save what changed.
                    self.save_known();
                    self.save_records(false);
                }
            }
            self.drain();
            if self.stopping.is_some() && self.waiting.is_empty() {
                self.save_known();
                self.save_records(true);
                // Free for the next node before the caller hears it stopped.
                self.lock.take();
                if let Some(reply) = self.stopping.take() {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
        }
    }

    /// A listener reported its first address (or gave up): once all have,
    /// `ready` calls are answered.
    fn listener_started(&mut self, id: libp2p::core::transport::ListenerId) {
        self.listeners_starting.retain(|l| *l != id);
        if self.listeners_starting.is_empty() {
            for reply in self.ready_waiters.drain(..) {
                let _ = reply.send(Ok(self.listening.clone()));
            }
        }
    }

    /// Dials a peer unless already connected; what it is learns identify.
    pub(crate) fn dial(&mut self, peer: PeerId) {
        if !self.swarm.is_connected(&peer)
            && let Err(e) = self.swarm.dial(peer)
        {
            tracing::debug!("cannot dial {peer}: {e}");
        }
    }

    /// A connected (and admitted) peer that serves the overlay: the first
    /// one starts the join, later ones go into the routing table.
    fn met(&mut self, info: PeerInfo<NodeAddr>) {
        if self.bootstrapped {
            self.core.add_peer(now(), info);
            return;
        }
        self.bootstrapped = true;
        if let Err(e) = self.core.bootstrap(now(), vec![info]) {
            tracing::warn!("bootstrap did not start: {e}");
        }
    }

    fn on_command(&mut self, command: DriverCommand) {
        let t = now();
        match command {
            DriverCommand::FindNode { target, reply } => match self.core.find_node(t, target) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::FindNode(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            DriverCommand::PutValue {
                key,
                value,
                lifetime,
                reply,
            } => match self
                .core
                .put_value_for(t, key, value, lifetime.unwrap_or(self.core.config().record_ttl))
            {
                Ok(id) => drop(self.waiting.insert(id, Waiting::PutValue(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            DriverCommand::GetValue { key, reply } => match self.core.get_value(t, key) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::GetValue(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            DriverCommand::Provide { keys, reply } => match self.core.provide_many(t, keys) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::Provide(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            DriverCommand::GetProviders { key, reply } => match self.core.get_providers(t, key) {
                Ok(id) => drop(self.waiting.insert(id, Waiting::GetProviders(reply))),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            DriverCommand::Peers { reply } => {
                let table = self.core.routing_table();
                let peers = table.peers().map(|p| {
                    let stale = table.is_stale(&p.key);
                    (p, stale)
                });
                drop(reply.send(Ok(peers.collect())));
            }
            DriverCommand::Listening { reply } => drop(reply.send(Ok(self.listening.clone()))),
            DriverCommand::Addresses { peer, addrs, reply } => {
                for addr in addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                    self.swarm.add_peer_address(peer, addr);
                }
                let _ = reply.send(Ok(()));
            }
            DriverCommand::Ready { reply } => {
                if self.listeners_starting.is_empty() {
                    let _ = reply.send(Ok(self.listening.clone()));
                } else {
                    self.ready_waiters.push(reply);
                }
            }
            DriverCommand::Refusals { reply } => drop(reply.send(Ok(self.refusals.iter().cloned().collect()))),
            DriverCommand::OnCore(run) => run(&mut self.core, t),
            DriverCommand::Leave { reply } => {
                let id = self.core.leave(t);
                self.waiting.insert(id, Waiting::Leave(reply));
            }
        }
    }

    fn info_of(&self, peer: PeerId) -> Option<PeerInfo<NodeAddr>> {
        let key = key_of_peer(&peer)?;
        let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
        Some(PeerInfo::new(key, NodeAddr { peer, addrs }))
    }

    fn learn_addresses(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let known = self.addresses.entry(peer).or_default();
        for addr in addrs {
            if known.len() >= MAX_ADDRS_PER_PEER {
                break;
            }
            if !known.contains(&addr) {
                known.push(addr);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, listener_id } => {
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                tracing::info!("listening on {full}");
                self.listening.push(full);
                self.listener_started(listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => {
                if let Err(e) = reason {
                    tracing::warn!("a listener stopped: {}", error_chain(&e));
                }
                self.listener_started(listener_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(event)) => self.on_overlay_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Stream(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let serves = info.protocols.iter().any(|p| p.as_ref() == wire::PROTOCOL);
                self.learn_addresses(peer_id, info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER));
                if serves && let Some(info) = self.info_of(peer_id) {
                    for addr in &info.addr.addrs {
                        self.swarm.add_peer_address(peer_id, addr.clone());
                    }
                    // Adds it, or refreshes the addresses the table holds.
                    self.met(info);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.add_peer_address(peer, addr.clone());
                    self.learn_addresses(peer, [addr]);
                    if key_of_peer(&peer).is_some() {
                        self.dial(peer);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr, error, ..
            } => {
                let reason = error_chain(&error);
                tracing::warn!("refused a connection from {send_back_addr}: {reason}");
                if self.refusals.len() == REFUSALS_KEPT {
                    self.refusals.pop_front();
                }
                self.refusals.push_back(Refusal {
                    from: send_back_addr,
                    reason,
                });
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::info!("cannot connect to {peer}: {}", error_chain(&error));
            }
            _ => {}
        }
    }

    fn on_overlay_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let t = now();
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let Some(from) = self.info_of(peer) else {
                        tracing::debug!("request from {peer}, whose id carries no ed25519 key: ignored");
                        return;
                    };
                    let response = match wire::decode_request::<NodeAddr>(&request) {
                        Ok((mode, request)) => {
                            let mut response = self.core.handle_request(t, from, mode, request);
                            self.fill_addresses(&mut response);
                            response
                        }
                        Err(e) => {
                            tracing::debug!("malformed request from {peer}: {e}");
                            return; // dropping the channel tells the peer it failed
                        }
                    };
                    match wire::encode_response(&response) {
                        Ok(bytes) => drop(self.swarm.behaviour_mut().overlay.send_response(channel, bytes)),
                        Err(e) => tracing::warn!("cannot encode a response: {e}"),
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(id) = self.outbound.remove(&request_id) else {
                        return;
                    };
                    match wire::decode_response::<NodeAddr>(&response) {
                        Ok(response) => self.core.handle_response(t, id, response),
                        Err(e) => {
                            tracing::debug!("malformed response from {peer}: {e}");
                            self.core.handle_failure(t, id);
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!("request to {peer} failed: {error}");
                if let Some(id) = self.outbound.remove(&request_id) {
                    self.core.handle_failure(t, id);
                }
            }
            _ => {}
        }
    }

    /// Peers the core learned from inbound requests may lack addresses (the
    /// sender's identify had not arrived yet); fill them in from what the
    /// node has learned since, so the asker can dial them.
    fn fill_addresses(&self, response: &mut shoal_overlay::Response<NodeAddr>) {
        use shoal_overlay::Response;
        let closer = match response {
            Response::Nodes { closer } | Response::Value { closer, .. } | Response::Providers { closer, .. } => closer,
            Response::Pong | Response::Stored | Response::Rejected(_) | Response::StoredBatch { .. } => return,
        };
        for peer in closer.iter_mut() {
            if peer.addr.addrs.is_empty()
                && let Some(known) = self.addresses.get(&peer.addr.peer)
            {
                peer.addr.addrs = known.iter().take(MAX_ADDRS_PER_PEER).cloned().collect();
            }
        }
    }

    /// Saves the record store if it changed, at most every
    /// [`RECORD_SAVE_INTERVAL`] unless `now` says so.
    fn save_records(&mut self, now: bool) {
        let changes = self.core.record_store().changes();
        if changes == self.saved_changes || (!now && self.saved_at.elapsed() < RECORD_SAVE_INTERVAL) {
            return;
        }
        let store = self.core.record_store();
        match self.saved.save(store.value_records(), store.provider_records()) {
            Ok(()) => {
                self.saved_changes = changes;
                self.saved_at = std::time::Instant::now();
            }
            Err(e) => tracing::warn!("cannot save records: {e}"),
        }
    }

    fn save_known(&mut self) {
        if self.known_dirty {
            self.known_dirty = false;
            if let Err(e) = self.known.save() {
                tracing::warn!("cannot save known peers: {e}");
            }
        }
    }

    /// Drains the core's outputs: transmits, then events.
    fn drain(&mut self) {
        while let Some(transmit) = self.core.poll_transmit() {
            self.send(transmit);
        }
        while let Some(event) = self.core.poll_event() {
            self.on_core_event(event);
        }
    }

    fn send(&mut self, transmit: Transmit<NodeAddr>) {
        let Transmit { id, to, mode, request } = transmit;
        let bytes = match wire::encode_request(mode, &request) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("cannot encode a request: {e}");
                self.core.handle_failure(now(), id);
                return;
            }
        };
        let peer = to.addr.peer;
        // Each address added is announced to every behaviour: only worth it
        // when the request has to dial.
        if !self.swarm.is_connected(&peer) {
            for addr in to.addr.addrs.iter().take(MAX_ADDRS_PER_PEER) {
                self.swarm.add_peer_address(peer, addr.clone());
            }
        }
        let outbound = self.swarm.behaviour_mut().overlay.send_request(&peer, bytes);
        self.outbound.insert(outbound, id);
    }

    fn on_core_event(&mut self, event: Event<NodeAddr>) {
        match event {
            Event::FoundNodes {
                query, peers, stats, ..
            } => {
                if let Some(Waiting::FindNode(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(FoundNodes { peers, stats }));
                }
            }
            Event::Put { query, stored, .. } => {
                if let Some(Waiting::PutValue(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(stored));
                }
            }
            Event::GotValue { query, record, .. } => {
                if let Some(Waiting::GetValue(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(record));
                }
            }
            Event::Left {
                query,
                handed_off,
                failed,
            } => {
                tracing::info!("left the overlay: {handed_off} records handed on, {failed} hand-offs failed");
                if let Some(Waiting::Leave(reply)) = self.waiting.remove(&query) {
                    self.stopping = Some(reply);
                }
            }
            Event::Aborted { query } => {
                if let Some(waiting) = self.waiting.remove(&query) {
                    match waiting {
                        Waiting::FindNode(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::PutValue(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::GetValue(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::Provide(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::GetProviders(r) => drop(r.send(Err(NodeError::Stopped))),
                        Waiting::Leave(r) => drop(r.send(Err(NodeError::Stopped))),
                    }
                }
            }
            Event::Bootstrapped { peers, .. } => {
                tracing::info!("joined the overlay: {peers} peers in the routing table")
            }
            Event::PeerAdded { peer } => {
                self.known.add(peer.addr.peer, &peer.addr.addrs);
                self.known_dirty = true;
            }
            Event::PeerRemoved { peer } => {
                self.known.remove(&peer.addr.peer);
                self.known_dirty = true;
            }
            Event::GotProviders { query, providers, .. } => {
                if let Some(Waiting::GetProviders(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(providers.into_iter().map(|p| p.provider).collect()));
                }
            }
            Event::ProvidedMany {
                query,
                keys,
                stored_everywhere,
                unconfirmed,
                lookups,
                stores,
                duration,
            } => {
                if let Some(Waiting::Provide(reply)) = self.waiting.remove(&query) {
                    let _ = reply.send(Ok(Provided {
                        keys,
                        stored_everywhere,
                        unconfirmed,
                        lookups,
                        stores,
                        duration,
                    }));
                }
            }
        }
    }
}
