//! Bounds on what other machines can make a peer hold: inbound connections
//! (pending, established and per remote IP address) and the file
//! descriptors they take.
//!
//! A connection that never finishes its handshake is dropped by the
//! transport's handshake timeout; these caps bound how many can wait for
//! it at once, so a flood of idle connections cannot take every descriptor
//! (and with them the control API and the blob store's files).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// How many inbound connections a peer accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Inbound connections still in their handshake, at most.
    pub pending_incoming: u32,
    /// Inbound connections established, at most.
    pub established_incoming: u32,
    /// Inbound connections (pending and established) from one IP address,
    /// at most.
    pub per_ip: u32,
}

/// Descriptors kept out of the connection caps' reach: the blob store's
/// files, outbound connections, the control API, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

impl ConnectionCaps {
    /// Caps that leave room for everything else within `descriptors` file
    /// descriptors: established inbound connections take at most half of
    /// them (1,024 at most), pending ones an eighth (128 at most).
    pub fn for_descriptors(descriptors: u64) -> Self {
        let usable = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(16);
        let cap = |share: u64, most: u32| u32::try_from(usable / share).unwrap_or(most).clamp(4, most);
        ConnectionCaps {
            pending_incoming: cap(8, 128),
            established_incoming: cap(2, 1024),
            per_ip: cap(8, 64),
        }
    }
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        Self::for_descriptors(descriptor_limit())
    }
}

/// The process's soft limit on open file descriptors.
pub fn descriptor_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Raises the soft limit on open file descriptors to the hard limit (a
/// soft limit of 1,024 is common, and a peer serving many connections and
/// files needs more). Returns the limit in force afterwards.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
    descriptor_limit()
}

/// The IP address a multiaddr starts with.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// Refuses an inbound connection from an IP address that already has
/// [`ConnectionCaps::per_ip`] of them, pending or established.
#[derive(Debug)]
pub(crate) struct PerIp {
    most: u32,
    /// The remote IP of every inbound connection counted.
    of: HashMap<ConnectionId, IpAddr>,
    count: BTreeMap<IpAddr, u32>,
}

/// An IP address over its cap.
#[derive(Debug, thiserror::Error)]
#[error("{ip} has {most} inbound connections already")]
struct TooMany {
    ip: IpAddr,
    most: u32,
}

impl PerIp {
    pub(crate) fn new(most: u32) -> Self {
        PerIp {
            most,
            of: HashMap::new(),
            count: BTreeMap::new(),
        }
    }

    fn forget(&mut self, id: ConnectionId) {
        if let Some(ip) = self.of.remove(&id)
            && let Some(n) = self.count.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.count.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        let n = self.count.entry(ip).or_default();
        if *n >= self.most {
            return Err(ConnectionDenied::new(TooMany { ip, most: self.most }));
        }
        *n += 1;
        self.of.insert(id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Counted since it was pending, until it closes.
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => self.forget(connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_room_within_the_descriptors() {
        let small = ConnectionCaps::for_descriptors(1024);
        assert_eq!(small.pending_incoming, 96);
        assert_eq!(small.established_incoming, 384);
        assert!(u64::from(small.pending_incoming + small.established_incoming) + RESERVED_DESCRIPTORS <= 1024);
        let large = ConnectionCaps::for_descriptors(1 << 20);
        assert_eq!(
            (large.pending_incoming, large.established_incoming, large.per_ip),
            (128, 1024, 64)
        );
        let tiny = ConnectionCaps::for_descriptors(10);
        assert_eq!(
            (tiny.pending_incoming, tiny.established_incoming, tiny.per_ip),
            (4, 8, 4)
        );
    }

    #[test]
    fn one_address_is_capped_and_freed_as_its_connections_go() {
        let mut per_ip = PerIp::new(2);
        let local: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let a: Multiaddr = "/ip4/10.0.0.2/tcp/5000".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.3/tcp/5000".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..4).map(|_| ConnectionId::new_unchecked(rand_id())).collect();
        assert!(per_ip.handle_pending_inbound_connection(ids[0], &local, &a).is_ok());
        assert!(per_ip.handle_pending_inbound_connection(ids[1], &local, &a).is_ok());
        assert!(per_ip.handle_pending_inbound_connection(ids[2], &local, &a).is_err());
        // Another address has its own count.
        assert!(per_ip.handle_pending_inbound_connection(ids[3], &local, &b).is_ok());
        per_ip.forget(ids[0]);
        assert!(per_ip.handle_pending_inbound_connection(ids[2], &local, &a).is_ok());
        assert_eq!(per_ip.count.get(&ip_of(&a).unwrap()), Some(&2));
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
