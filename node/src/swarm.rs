//! The libp2p side of a node: the transports (TCP with noise and yamux,
//! QUIC; admission first in a private swarm), the behaviours (connection
//! caps, the overlay's request-response, identify, ping, mDNS, raw
//! streams for blobs and hand-offs) and the swarm that runs them.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade;
use libp2p::futures::future::Either;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{PeerId, Swarm, identify, identity::Keypair, mdns, noise, ping, quic, tcp, yamux};

use crate::admission::{self, SwarmKey};
use crate::codec::{FrameCodec, OVERLAY_PROTOCOL};
use crate::error::NodeError;

/// What identify tells other peers this peer runs.
pub(crate) const AGENT_VERSION: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// First: a connection over a cap is refused before anyone else hears
    /// of it.
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    pub(crate) per_ip: crate::limits::PerIp,
    pub(crate) overlay: request_response::Behaviour<FrameCodec>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) stream: crate::streams::Behaviour,
}

/// How long a new TCP connection may take to finish its security and
/// multiplexing handshakes; one that takes longer (or never starts them)
/// is dropped. (QUIC's handshake has a timeout of its own.)
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn build_swarm(
    keypair: &Keypair,
    mdns: bool,
    swarm_key: Option<SwarmKey>,
    caps: crate::limits::ConnectionCaps,
) -> Result<Swarm<Behaviour>, NodeError> {
    let transport_error = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
    let peer_id = keypair.public().to_peer_id();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(keypair).map_err(|e| transport_error(&e))?)
        .multiplex(yamux::Config::default())
        .timeout(HANDSHAKE_TIMEOUT);
    let quic = quic::tokio::Transport::new(quic::Config::new(keypair));
    let both = tcp.or_transport(quic).map(|either, _| match either {
        Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
    });
    // In a private swarm every connection, TCP or QUIC, passes admission
    // before the swarm hears of it.
    let transport: Boxed<(PeerId, StreamMuxerBox)> = match swarm_key {
        Some(key) => both
            .and_then(move |output, endpoint| admission::admit(key.clone(), peer_id, output, endpoint))
            .boxed(),
        None => both.boxed(),
    };
    let overlay = request_response::Behaviour::new(
        [(OVERLAY_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new("/shoal/1".into(), keypair.public()).with_agent_version(AGENT_VERSION.to_string()),
    );
    let mdns = if mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|e| transport_error(&e))?)
    } else {
        None
    };
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(caps.pending_incoming))
        .with_max_established_incoming(Some(caps.established_incoming));
    let behaviour = Behaviour {
        limits: libp2p::connection_limits::Behaviour::new(limits),
        per_ip: crate::limits::PerIp::new(caps.per_ip),
        overlay,
        identify,
        ping: ping::Behaviour::default(),
        mdns: mdns.into(),
        stream: crate::streams::Behaviour::new(),
    };
    let config = libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(60));
    Ok(Swarm::new(transport, behaviour, peer_id, config))
}
