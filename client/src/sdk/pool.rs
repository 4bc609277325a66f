//! Connections: a few HTTP/2 channels per node, made on first use and shared by every request
//! to that node, so many requests are in flight on each at once, and the node's pipeline
//! session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::error::{ClientError, Result};
use super::pipeline::{Session, Transport};
use crate::pb::v1::key_value_client::KeyValueClient;
use crate::MAX_MESSAGE_BYTES;

/// The channels of one node and what the client believes about its reachability.
pub(crate) struct NodeConns {
    address: String,
    channels: Vec<Channel>,
    next: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
    /// Whether `down_until` is set, so that the every-request checks of a node that has not
    /// failed take no lock and read no clock.
    marked_down: AtomicBool,
    down_for: Duration,
    /// The pipeline session single-key calls share, opened on first use and again after it
    /// ends.
    session: Mutex<Option<Arc<Session>>>,
    connect_timeout: Duration,
    /// Whether sessions are framed; cleared when the node does not serve framed sessions, so
    /// its sessions are gRPC streams from then on.
    framed: AtomicBool,
    /// Set when the node answered UNIMPLEMENTED to Pipeline (a version without it): its
    /// single-key calls go unary from then on.
    unary_only: AtomicBool,
}

impl NodeConns {
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// A stub on the next channel in turn, with the message limits every client must set.
    pub(crate) fn client(&self) -> KeyValueClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        KeyValueClient::new(self.channels[i].clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The node's pipeline session, opened if none is open.
    pub(crate) fn session(&self) -> Arc<Session> {
        let mut session = self.session.lock().expect("not poisoned");
        match &*session {
            Some(open) if !open.ended() => open.clone(),
            _ => {
                let opened = if self.framed.load(Ordering::Relaxed) {
                    Session::open_framed(self.address.clone(), self.connect_timeout)
                } else {
                    Session::open_grpc(self.client())
                };
                session.insert(Arc::new(opened)).clone()
            }
        }
    }

    pub(crate) fn unary_only(&self) -> bool {
        self.unary_only.load(Ordering::Relaxed)
    }

    /// The node answered UNIMPLEMENTED to a session over `transport`: the next is gRPC after a
    /// framed one, and after a gRPC one single-key calls go unary.
    pub(crate) fn refused(&self, transport: Transport) {
        match transport {
            Transport::Framed => self.framed.store(false, Ordering::Relaxed),
            Transport::Grpc => self.unary_only.store(true, Ordering::Relaxed),
        }
    }

    /// After a transport failure the node goes to the back of every candidate list until
    /// `down_for` has passed; then it is tried again like any other.
    pub(crate) fn mark_down(&self) {
        let mut until = self.down_until.lock().expect("not poisoned");
        *until = Some(Instant::now() + self.down_for);
        self.marked_down.store(true, Ordering::Release);
    }

    pub(crate) fn mark_up(&self) {
        if self.marked_down.load(Ordering::Acquire) {
            let mut until = self.down_until.lock().expect("not poisoned");
            *until = None;
            self.marked_down.store(false, Ordering::Release);
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.marked_down.load(Ordering::Acquire)
            && self
                .down_until
                .lock()
                .expect("not poisoned")
                .is_some_and(|until| Instant::now() < until)
    }
}

pub(crate) struct Pool {
    /// Read on every request, written when a node is first used.
    nodes: RwLock<HashMap<String, Arc<NodeConns>>>,
    channels_per_node: usize,
    connect_timeout: Duration,
    down_for: Duration,
    framed_sessions: bool,
}

impl Pool {
    pub(crate) fn new(
        channels_per_node: usize,
        connect_timeout: Duration,
        down_for: Duration,
        framed_sessions: bool,
    ) -> Pool {
        Pool {
            nodes: RwLock::new(HashMap::new()),
            channels_per_node: channels_per_node.max(1),
            connect_timeout,
            down_for,
            framed_sessions,
        }
    }

    /// The node at `address`, its channels created (but not yet connected) on first use.
    pub(crate) fn node(&self, address: &str) -> Result<Arc<NodeConns>> {
        if let Some(node) = self.nodes.read().expect("not poisoned").get(address) {
            return Ok(node.clone());
        }
        let mut nodes = self.nodes.write().expect("not poisoned");
        if let Some(node) = nodes.get(address) {
            return Ok(node.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError::InvalidEndpoint {
                address: address.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let channels = (0..self.channels_per_node)
            .map(|_| endpoint.connect_lazy())
            .collect();
        let node = Arc::new(NodeConns {
            address: address.to_owned(),
            channels,
            next: AtomicUsize::new(0),
            down_until: Mutex::new(None),
            marked_down: AtomicBool::new(false),
            down_for: self.down_for,
            session: Mutex::new(None),
            connect_timeout: self.connect_timeout,
            framed: AtomicBool::new(self.framed_sessions),
            unary_only: AtomicBool::new(false),
        });
        nodes.insert(address.to_owned(), node.clone());
        Ok(node)
    }

    /// Whether the client has seen `address` fail recently; unknown addresses are not down.
    pub(crate) fn is_down(&self, address: &str) -> bool {
        self.nodes
            .read()
            .expect("not poisoned")
            .get(address)
            .is_some_and(|n| n.is_down())
    }

    /// Drops the channels of nodes that are neither in the ring nor seeds, so that a cluster
    /// that replaces its nodes over months does not leave the pool growing.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.nodes
            .write()
            .expect("not poisoned")
            .retain(|address, _| keep(address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(down_for: Duration) -> Pool {
        Pool::new(1, Duration::from_secs(1), down_for, true)
    }

    #[tokio::test]
    async fn a_node_is_down_from_its_failure_until_it_answers_or_its_time_is_up() {
        let p = pool(Duration::from_secs(3600));
        let node = p.node("127.0.0.1:1").unwrap();
        assert!(!p.is_down("127.0.0.1:1") && !p.is_down("127.0.0.1:2"));
        node.mark_down();
        assert!(p.is_down("127.0.0.1:1"));
        node.mark_up();
        assert!(!p.is_down("127.0.0.1:1"));
        let brief = pool(Duration::ZERO);
        let node = brief.node("127.0.0.1:1").unwrap();
        node.mark_down();
        assert!(!brief.is_down("127.0.0.1:1"));
        assert!(Arc::ptr_eq(&node, &brief.node("127.0.0.1:1").unwrap()));
    }
}
