//! Connections to other nodes: one lazily connected HTTP/2 channel per address for the
//! internode gRPC service (HTTP/2 multiplexes every concurrent request on it), one pipe per
//! peer for replica operations, and the simulated WAN delay towards remote DCs that
//! `kvctl demo --wan-latency` asks for.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use client::pb::internode::v1::internode_client::InternodeClient;
use client::pb::internode::v1::Sender;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, Either};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use super::pipe::{Pipe, PipeTarget};

/// A peer that does not accept a connection within this long is treated as failed for the
/// request; the failure detector, not this timeout, decides whether it is down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Channels kept at most; a cluster has far fewer nodes, so reaching it means addresses are
/// churning and the cache is simply cleared.
const CHANNELS_MAX: usize = 4_096;

pub type Internode = InternodeClient<Channel>;

pub struct Peers {
    cluster: String,
    me: String,
    dc: String,
    channels: DashMap<String, Internode, foldhash::fast::RandomState>,
    /// By host id, with the address each pipe was opened to.
    pipes: DashMap<String, (String, Arc<Pipe>), foldhash::fast::RandomState>,
    wan_latency_ms: BTreeMap<String, u64>,
    /// Connections leave from the internode listen address, so a peer (and a firewall rule
    /// cutting DCs apart, on loopback where every address would otherwise send as 127.0.0.1)
    /// sees the node's own address.
    local_ip: Option<IpAddr>,
}

impl Peers {
    /// `listen_ip` is the internode listen address; unspecified (0.0.0.0) leaves the source
    /// address to the routing table.
    pub fn new(
        cluster: &str,
        me: &str,
        dc: &str,
        wan_latency_ms: BTreeMap<String, u64>,
        listen_ip: IpAddr,
    ) -> Peers {
        Peers {
            cluster: cluster.to_owned(),
            me: me.to_owned(),
            dc: dc.to_owned(),
            channels: DashMap::default(),
            pipes: DashMap::default(),
            wan_latency_ms,
            local_ip: Some(listen_ip).filter(|ip| !ip.is_unspecified()),
        }
    }

    /// Who this node is, for every internode request.
    pub fn sender(&self) -> Option<Sender> {
        Some(Sender {
            cluster: self.cluster.clone(),
            node_id: self.me.clone(),
        })
    }

    /// A client for the internode service at `address` (`host:port`) of a node in `dc`
    /// (`None` when unknown, e.g. a seed). Traffic to other DCs is zstd-compressed: WAN
    /// bandwidth is dear, loopback and LAN CPU is not worth spending. tonic makes a zstd context
    /// per message, which costs more than a small message's compression, so the hot path's
    /// small messages go on pipes instead.
    pub fn client(
        &self,
        address: &str,
        dc: Option<&str>,
    ) -> Result<Internode, tonic::transport::Error> {
        let compress = dc.is_some_and(|dc| dc != self.dc);
        let key = format!("{address}/{compress}");
        if let Some(c) = self.channels.get(&key) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .local_address(self.local_ip)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let mut client = InternodeClient::new(channel)
            .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(client::MAX_MESSAGE_BYTES);
        if compress {
            client = client
                .send_compressed(CompressionEncoding::Zstd)
                .accept_compressed(CompressionEncoding::Zstd);
        }
        if self.channels.len() >= CHANNELS_MAX {
            self.channels.clear();
        }
        self.channels.insert(key, client.clone());
        Ok(client)
    }

    /// The pipe to node `node_id` at `address` in `dc`, opened on first use and again after
    /// it closes (the peer restarted) or the node moved to another address.
    pub fn pipe(&self, address: &str, dc: &str, node_id: &str) -> Arc<Pipe> {
        // Looked up by &str: this runs for every replica operation.
        if let Some(p) = (self.pipes.get(node_id)).filter(|p| p.0 == address && !p.1.is_closed()) {
            return p.1.clone();
        }
        if self.pipes.len() >= CHANNELS_MAX {
            self.pipes.clear();
        }
        let open = || {
            let pipe = Pipe::open(PipeTarget {
                address: address.to_owned(),
                compress: dc != self.dc,
                local_ip: self.local_ip,
                sender: self.sender(),
                node_id: node_id.to_owned(),
            });
            (address.to_owned(), Arc::new(pipe))
        };
        // Under the entry's lock, so callers racing to reopen share one pipe.
        let mut entry = self.pipes.entry(node_id.to_owned()).or_insert_with(open);
        if entry.0 != address || entry.1.is_closed() {
            *entry = open();
        }
        entry.1.clone()
    }

    /// The simulated one-way delay to a node in `dc`.
    pub fn wan_delay(&self, dc: &str) -> Duration {
        Duration::from_millis(self.wan_latency_ms.get(dc).copied().unwrap_or(0))
    }

    /// Runs one request to a node in `dc`, delayed on the way out and on the way back so a
    /// round trip costs twice the configured one-way latency, as a real WAN link would.
    ///
    /// Without a delay the request is returned as it is: an `async fn` holding it across three
    /// awaits stored it more than once, and every replica call's future (one per replica per
    /// operation, moved into its task or `FuturesUnordered`) carried those bytes.
    pub fn call<'a, F>(&self, dc: &str, request: F) -> Either<F, BoxFuture<'a, F::Output>>
    where
        F: Future + Send + 'a,
        F::Output: Send,
    {
        let delay = self.wan_delay(dc);
        if delay.is_zero() {
            return Either::Left(request);
        }
        Either::Right(Box::pin(async move {
            wan_wait(delay).await;
            let out = request.await;
            wan_wait(delay).await;
            out
        }))
    }
}

/// Waits a simulated WAN delay; none at all without one, as a zero-length timer still costs a
/// timer registration and a wake-up.
pub async fn wan_wait(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}
