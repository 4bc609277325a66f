//! The internode gRPC service: forwarding to a DC's replicas, hint delivery, range scans for
//! coordinators, streaming, repair and gossip. Replica reads and writes go on pipes
//! (`super::pipe`), which share the port.

use std::pin::Pin;
use std::sync::Arc;

use client::frame::Protocol;
use client::pb::internode::v1 as ipb;
use client::pb::internode::v1::internode_server::{Internode, InternodeServer};
use client::KvError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::convert::{cell_to_pb, digest_from_pb, endpoint_from_pb, endpoint_to_pb};
use super::replica::from_pb_mutations;
use super::Node;
use crate::cluster::gossip::{Ack2, Digest};

/// Most cells one ReplicaScan returns.
const SCAN_LIMIT_MAX: u32 = 10_000;

pub async fn serve(node: Arc<Node>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let service = InternodeServer::new(InternodeService { node: node.clone() })
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(client::MAX_MESSAGE_BYTES);
    // Pipes and gRPC share the port.
    let pipe = move |connection, stop| {
        super::pipe::serve::serve_connection(node.clone(), connection, stop)
    };
    let routes = Routes::new(service);
    super::accept::serve_shared_port("internode", listener, routes, stop, Protocol::Pipe, pipe)
        .await;
}

struct InternodeService {
    node: Arc<Node>,
}

fn status(e: KvError) -> Status {
    e.into_status()
}

fn decode_range(range: Option<client::pb::v1::TokenRange>) -> Result<topology::TokenRange, Status> {
    let range = range.ok_or_else(|| status(KvError::invalid_argument("range", "missing")))?;
    client::decode_token_range(&range).map_err(|(f, e)| {
        status(KvError::invalid_argument(
            format!("range.{f}"),
            e.to_string(),
        ))
    })
}

fn failed(message: String) -> Status {
    Status::failed_precondition(message)
}

/// Refuses traffic from another cluster.
pub fn check_sender(node: &Node, sender: &Option<ipb::Sender>) -> Result<(), Status> {
    let cluster = sender.as_ref().map_or("", |s| s.cluster.as_str());
    if cluster != node.config.cluster_name {
        return Err(failed(format!(
            "sender belongs to cluster {cluster:?}, this node to {:?}",
            node.config.cluster_name
        )));
    }
    Ok(())
}

/// Refuses traffic meant for the node this one replaced on the same address.
pub fn check_target(node: &Node, target: &str) -> Result<(), Status> {
    if target != node.me.0 {
        return Err(failed(format!(
            "meant for node {target:?}, this is {:?}",
            node.me.0
        )));
    }
    Ok(())
}

impl InternodeService {
    fn check_sender(&self, sender: &Option<ipb::Sender>) -> Result<(), Status> {
        check_sender(&self.node, sender)
    }

    fn check_target(&self, target: &str) -> Result<(), Status> {
        check_target(&self.node, target)
    }

    async fn apply(&self, keyspace: &str, muts: Vec<ipb::ReplicaMutation>) -> Result<(), Status> {
        let muts = from_pb_mutations(muts).map_err(status)?;
        (self.node.apply_local(keyspace, muts).await)
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

type ChunkStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ipb::StreamRangesChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Internode for InternodeService {
    async fn replica_scan(
        &self,
        request: Request<ipb::ReplicaScanRequest>,
    ) -> Result<Response<ipb::ReplicaScanResponse>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        if r.limit == 0 || r.limit > SCAN_LIMIT_MAX {
            return Err(status(KvError::invalid_argument(
                "limit",
                format!("{} is outside 1..={SCAN_LIMIT_MAX}", r.limit),
            )));
        }
        let range = r
            .range
            .ok_or_else(|| status(KvError::invalid_argument("range", "missing")))?;
        let range = client::decode_token_range(&range).map_err(|(f, e)| {
            status(KvError::invalid_argument(
                format!("range.{f}"),
                e.to_string(),
            ))
        })?;
        let (from, end) = super::scan::engine_bounds(range, &r.after).map_err(status)?;
        let node = self.node.clone();
        let page = tokio::task::spawn_blocking(move || {
            node.storage.scan(&r.keyspace, from, end, r.limit as usize)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let cells = (page.cells.iter())
            .map(|(k, c)| ipb::ReplicaMutation {
                key: k.slice(crate::storage_key::TOKEN_BYTES..),
                cell: Some(cell_to_pb(c)),
            })
            .collect();
        Ok(Response::new(ipb::ReplicaScanResponse {
            cells,
            exhausted: page.exhausted,
        }))
    }

    async fn hint_deliver(
        &self,
        request: Request<ipb::HintDeliverRequest>,
    ) -> Result<Response<ipb::HintDeliverResponse>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        self.check_target(&r.target_node_id)?;
        let mut applied = 0u32;
        for hint in r.hints {
            let Some(m) = hint.mutation else { break };
            let known = self
                .node
                .members
                .view()
                .schema
                .get(&hint.keyspace)
                .is_some();
            // A hint for a dropped keyspace has nothing left to update: count it delivered.
            if known {
                if let Err(e) = self.apply(&hint.keyspace, vec![m]).await {
                    tracing::debug!(error = %e, "hint not applied");
                    break;
                }
            }
            applied += 1;
        }
        Ok(Response::new(ipb::HintDeliverResponse { applied }))
    }

    async fn gossip_syn(
        &self,
        request: Request<ipb::GossipSynRequest>,
    ) -> Result<Response<ipb::GossipAck>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        let digests: Vec<Digest> = r.digests.into_iter().map(digest_from_pb).collect();
        let ack = self.node.members.on_syn(&digests);
        Ok(Response::new(ipb::GossipAck {
            states: ack
                .states
                .iter()
                .map(|(n, s)| endpoint_to_pb(n, s))
                .collect(),
            requests: (ack.requests.iter())
                .map(super::convert::digest_to_pb)
                .collect(),
        }))
    }

    async fn gossip_ack2(
        &self,
        request: Request<ipb::GossipAck2Request>,
    ) -> Result<Response<ipb::GossipAck2Response>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        let states = (r.states.into_iter())
            .map(endpoint_from_pb)
            .collect::<Result<_, _>>()
            .map_err(status)?;
        if let Some(schema) = self.node.members.on_ack2(Ack2 { states }) {
            self.node.adopt_schema(schema).await.map_err(status)?;
        }
        Ok(Response::new(ipb::GossipAck2Response {}))
    }

    type StreamRangesStream = ChunkStream;

    async fn stream_ranges(
        &self,
        request: Request<ipb::StreamRangesRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        let ranges = decode_ranges(&r.ranges)?;
        let peer = r.sender.map(|s| s.node_id).unwrap_or_default();
        let rx = self.node.serve_stream(r.keyspace, ranges, r.after, &peer);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_ranges(
        &self,
        request: Request<ipb::FetchRangesRequest>,
    ) -> Result<Response<ipb::FetchRangesResponse>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        let ranges = decode_ranges(&r.ranges)?;
        let (cells, bytes) = (self.node)
            .fetch_ranges(&r.keyspace, &ranges, &r.source_node_id, r.session_id)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(ipb::FetchRangesResponse { cells, bytes }))
    }

    async fn merkle_tree(
        &self,
        request: Request<ipb::MerkleTreeRequest>,
    ) -> Result<Response<ipb::MerkleTreeResponse>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        let range = decode_range(r.range)?;
        let depth = u8::try_from(r.depth).unwrap_or(u8::MAX);
        let shape = crate::cluster::merkle::Shape::new(range.start.0, range.end.0, depth)
            .map_err(|e| status(KvError::invalid_argument("depth", e.to_string())))?;
        let tree = (self
            .node
            .build_tree(&r.keyspace, range, shape, r.purge_before_ms)
            .await)
            .map_err(status)?;
        let (leaves, leaves_checksum) = crate::cluster::merkle::encode_leaves(tree.leaves());
        Ok(Response::new(ipb::MerkleTreeResponse {
            leaves: leaves.into(),
            leaves_checksum,
            root: tree.root(),
        }))
    }

    async fn repair_completed(
        &self,
        request: Request<ipb::RepairCompletedRequest>,
    ) -> Result<Response<ipb::RepairCompletedResponse>, Status> {
        let r = request.into_inner();
        self.check_sender(&r.sender)?;
        let range = decode_range(r.range)?;
        (self.node)
            .record_repair(&r.keyspace, r.schema_version, range, r.started_at_ms)
            .await
            .map_err(status)?;
        Ok(Response::new(ipb::RepairCompletedResponse {}))
    }
}

fn decode_ranges(
    ranges: &[client::pb::v1::TokenRange],
) -> Result<Vec<topology::TokenRange>, Status> {
    (ranges.iter().enumerate())
        .map(|(i, r)| {
            client::decode_token_range(r).map_err(|(f, e)| {
                status(KvError::invalid_argument(
                    format!("ranges[{i}].{f}"),
                    e.to_string(),
                ))
            })
        })
        .collect()
}
