//! Raw streams of shoal's own protocols (`/shoal/blob/1`, `/shoal/jobs/1`,
//! `/shoal/quorum/1`, hand-offs) over the swarm's connections: a
//! [`Control`] opens one to a peer (dialing it if need be), and the streams
//! peers open to this one arrive, per protocol, on an [`IncomingStreams`].
//!
//! Why not `libp2p-stream`: it hands an inbound stream to its receiver
//! through a channel with room for one, and resets the stream when that
//! room is taken. Streams arrive in bursts (a batch of jobs asks each member
//! of a home several things at once), the swarm task takes every stream in
//! a burst in one go, and the task that accepts them cannot run in between:
//! under load most of a burst was reset unread, and the peer that opened it
//! saw "connection is closed". Here each protocol has a queue of
//! [`INBOUND_QUEUE`] streams; past that the node is overloaded, a stream is
//! refused (reset) and that is logged.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound, StreamUpgradeError,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, DialError,
    DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, futures};
use tokio::sync::{mpsc, oneshot};

/// Streams of one protocol that may wait to be taken by its server before
/// further ones are refused.
pub(crate) const INBOUND_QUEUE: usize = 1024;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenStreamError {
    #[error("the peer does not speak {0}")]
    UnsupportedProtocol(StreamProtocol),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The protocol is already being accepted elsewhere.
#[derive(Debug)]
pub(crate) struct AlreadyAccepted;

/// Each accepted protocol's queue.
#[derive(Default)]
struct Registry {
    accepted: HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>,
}

type Shared = Arc<Mutex<Registry>>;

fn registry(shared: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream asked for.
#[derive(Debug)]
pub(crate) struct Open {
    peer: PeerId,
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
}

/// Opens streams and registers the protocols this node answers. Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct Control {
    shared: Shared,
    asks: mpsc::UnboundedSender<Open>,
}

impl Control {
    /// Opens a stream of `protocol` to `peer`, over a connection it has or
    /// one dialed for it. The caller bounds how long that may take.
    pub(crate) async fn open_stream(&self, peer: PeerId, protocol: StreamProtocol) -> Result<Stream, OpenStreamError> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .send(Open { peer, protocol, reply })
            .map_err(|_| std::io::Error::other("the node is stopping"))?;
        answer
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the connection closed"))?
    }

    /// The streams peers open with `protocol`, from now on.
    pub(crate) fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, AlreadyAccepted> {
        let mut registry = registry(&self.shared);
        registry.accepted.retain(|_, queue| !queue.is_closed());
        if registry.accepted.contains_key(&protocol) {
            return Err(AlreadyAccepted);
        }
        let (queue, taken) = mpsc::channel(INBOUND_QUEUE);
        registry.accepted.insert(protocol, queue);
        Ok(IncomingStreams { taken })
    }
}

/// The streams of one protocol that peers opened to this one.
pub(crate) struct IncomingStreams {
    taken: mpsc::Receiver<(PeerId, Stream)>,
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, Stream);

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.taken.poll_recv(cx)
    }
}

/// The swarm's side: routes each asked-for stream to a connection with its
/// peer, dialing the peer when there is none.
pub(crate) struct Behaviour {
    shared: Shared,
    asks: mpsc::UnboundedReceiver<Open>,
    control: Control,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Asks for peers being dialed.
    dialing: HashMap<PeerId, Vec<Open>>,
    out: VecDeque<ToSwarm<Infallible, Open>>,
}

impl Behaviour {
    pub(crate) fn new() -> Self {
        let shared = Shared::default();
        let (send, asks) = mpsc::unbounded_channel();
        Behaviour {
            control: Control {
                shared: shared.clone(),
                asks: send,
            },
            shared,
            asks,
            connections: HashMap::new(),
            dialing: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    pub(crate) fn new_control(&self) -> Control {
        self.control.clone()
    }

    fn route(&mut self, open: Open) {
        if open.reply.is_closed() {
            return; // nobody waits for it any more
        }
        match self.connections.get(&open.peer).and_then(|c| c.last()) {
            Some(&connection) => self.out.push_back(ToSwarm::NotifyHandler {
                peer_id: open.peer,
                handler: NotifyHandler::One(connection),
                event: open,
            }),
            None => {
                let peer = open.peer;
                let waiting = self.dialing.entry(peer).or_default();
                waiting.push(open);
                if waiting.len() == 1 {
                    self.out.push_back(ToSwarm::Dial {
                        opts: DialOpts::peer_id(peer)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build(),
                    });
                }
            }
        }
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            shared: self.shared.clone(),
            asked: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(established) => {
                let peer = established.peer_id;
                self.connections
                    .entry(peer)
                    .or_default()
                    .push(established.connection_id);
                for open in self.dialing.remove(&peer).unwrap_or_default() {
                    self.route(open);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id, connection_id, ..
            }) => {
                if let Some(connections) = self.connections.get_mut(&peer_id) {
                    connections.retain(|c| *c != connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => {
                // A dial skipped because another is under way is not a
                // failure: that other dial decides.
                if matches!(error, DialError::DialPeerConditionFalse(_)) || self.connections.contains_key(&peer) {
                    return;
                }
                let why = error.to_string();
                for open in self.dialing.remove(&peer).unwrap_or_default() {
                    let _ = open.reply.send(Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        format!("cannot reach {peer}: {why}"),
                    )
                    .into()));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            if let Some(out) = self.out.pop_front() {
                return Poll::Ready(out);
            }
            match self.asks.poll_recv(cx) {
                Poll::Ready(Some(open)) => self.route(open),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One connection's side: opens the streams routed to it and queues the
/// ones the peer opens.
pub(crate) struct Handler {
    peer: PeerId,
    shared: Shared,
    asked: VecDeque<Open>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Open;

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols, ()> {
        let accepted = registry(&self.shared).accepted.keys().cloned().collect();
        SubstreamProtocol::new(Protocols(accepted), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.asked.is_empty()
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Protocols, Open, Infallible>> {
        while let Some(open) = self.asked.pop_front() {
            if open.reply.is_closed() {
                continue;
            }
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Protocols(vec![open.protocol.clone()]), open),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, open: Open) {
        self.asked.push_back(open);
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<'_, Protocols, Protocols, (), Open>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                let mut registry = registry(&self.shared);
                let Some(queue) = registry.accepted.get(&protocol) else {
                    return; // no longer accepted: dropping the stream resets it
                };
                match queue.try_send((self.peer, stream)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!("a {protocol} stream refused: {INBOUND_QUEUE} wait to be served (overloaded)");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        registry.accepted.remove(&protocol);
                    }
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: open,
            }) => {
                let _ = open.reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: open, error }) => {
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => OpenStreamError::UnsupportedProtocol(open.protocol),
                    StreamUpgradeError::Timeout => {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "opening the stream timed out").into()
                    }
                    StreamUpgradeError::Io(e) => e.into(),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = open.reply.send(Err(error));
            }
            _ => {}
        }
    }
}

/// The protocols a stream may be negotiated to; the upgrade itself does
/// nothing more.
#[derive(Clone)]
pub(crate) struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, protocol)))
    }
}
