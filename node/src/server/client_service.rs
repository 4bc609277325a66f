//! The client gRPC service (kv.v1.KeyValue): validates every request before anything is
//! written, then hands it to the coordinator. Every response carries the ring epoch header so
//! clients notice topology changes without polling.

use std::sync::Arc;

use bytes::Bytes;
use client::frame::Protocol;
use client::pb::v1 as pb;
use client::pb::v1::key_value_server::{KeyValue, KeyValueServer};
use client::KvError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::convert::{self, cell_to_pb, check_key, check_value, keyspace_to_pb, read_value};
use super::replica::{ReplicaRead, Timer};
use super::scan::Position;
use super::Node;
use crate::cluster::ConsistencyLevel;
use crate::lsm::Cell;

/// Keys per MultiGet and mutations per Batch, as the protocol promises.
const ITEMS_MAX: usize = 1000;
const PAGE_SIZE_DEFAULT: u32 = 100;
const PAGE_SIZE_MAX: u32 = 10_000;
/// Range reports queued for a slow client before the repair waits for it.
const REPAIR_PROGRESS_QUEUE: usize = 16;

mod pipeline;
mod session;

pub async fn serve(node: Arc<Node>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let client_service = ClientService {
        node,
        stop: stop.clone(),
    };
    let service = KeyValueServer::new(client_service.clone())
        .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(client::MAX_MESSAGE_BYTES);
    // Framed sessions and gRPC share the port; the accept loop sets TCP_NODELAY on both.
    let session = move |connection, stop| client_service.clone().serve_session(connection, stop);
    let routes = Routes::new(service);
    super::accept::serve_shared_port("client", listener, routes, stop, Protocol::Session, session)
        .await;
}

#[derive(Clone)]
struct ClientService {
    node: Arc<Node>,
    /// Pipeline sessions outlive single requests, so they watch for shutdown themselves: the
    /// server's graceful shutdown waits for every open stream to end.
    stop: watch::Receiver<bool>,
}

type Reply<T> = Result<Response<T>, Status>;

impl ClientService {
    fn reply<T>(&self, result: Result<T, KvError>) -> Reply<T> {
        match result {
            Ok(body) => {
                let mut response = Response::new(body);
                let epoch = self.node.members.view().epoch;
                if let Ok(v) = epoch.to_string().parse() {
                    response.metadata_mut().insert(client::RING_EPOCH_HEADER, v);
                }
                Ok(response)
            }
            Err(e) => Err(self.failed(e).into_status()),
        }
    }

    /// Counts an error on its way to the client.
    fn failed(&self, error: KvError) -> KvError {
        self.node.metrics.client_errors.add(1);
        error
    }

    /// Refuses an operation on this node addressed to another (a stale address book).
    fn check_me(&self, node_id: &str) -> Result<(), KvError> {
        if node_id != self.node.me.0 {
            let reason = format!("this is {}, not {node_id}", self.node.me);
            return Err(KvError::invalid_argument("node_id", reason));
        }
        Ok(())
    }

    fn check_keyspace(&self, keyspace: &str) -> Result<(), KvError> {
        if self.node.members.view().schema.get(keyspace).is_none() {
            return Err(KvError::KeyspaceNotFound(pb::KeyspaceNotFound {
                keyspace: keyspace.to_owned(),
            }));
        }
        Ok(())
    }

    /// The write timestamp: the client's (checked against our clock's drift bound, and
    /// observed so our later timestamps are above it) or our HLC's.
    fn timestamp(&self, client_ts: Option<u64>) -> Result<u64, KvError> {
        match client_ts {
            None => Ok(self.node.hlc.now()),
            Some(ts) => {
                (self.node.hlc.observe(ts))
                    .map_err(|e| KvError::invalid_argument("timestamp", e.to_string()))?;
                Ok(ts)
            }
        }
    }

    fn expiry(&self, ttl_ms: Option<u64>, field: &str) -> Result<Option<u64>, KvError> {
        match ttl_ms {
            None => Ok(None),
            Some(0) => Err(KvError::invalid_argument(
                field,
                "0 is refused; omit ttl_ms to keep the value forever",
            )),
            Some(ttl) => Ok(Some(self.node.clock.now_ms().saturating_add(ttl))),
        }
    }

    async fn write_one(
        &self,
        keyspace: &str,
        key: Bytes,
        cell: Cell,
        level: ConsistencyLevel,
    ) -> Result<(), KvError> {
        self.node.metrics.client_writes.add(1);
        self.node.coordinate_write(keyspace, key, cell, level).await
    }

    async fn get_inner(&self, r: pb::GetRequest) -> Result<pb::GetResponse, KvError> {
        let level = convert::level(r.consistency)?;
        check_key(&r.key, "key")?;
        self.check_keyspace(&r.keyspace)?;
        self.node.metrics.client_reads.add(1);
        let cell = self.node.coordinate_read(&r.keyspace, r.key, level).await?;
        let now = self.node.clock.now_ms();
        Ok(pb::GetResponse {
            value: cell.and_then(|c| read_value(&c, now)),
        })
    }

    async fn put_inner(&self, r: pb::PutRequest) -> Result<pb::PutResponse, KvError> {
        let level = convert::level(r.consistency)?;
        check_key(&r.key, "key")?;
        check_value(&r.value, "value")?;
        self.check_keyspace(&r.keyspace)?;
        let expiry = self.expiry(r.ttl_ms, "ttl_ms")?;
        let timestamp = self.timestamp(r.timestamp)?;
        let mut cell = Cell::value(timestamp, r.value);
        cell.expires_at_ms = expiry;
        self.write_one(&r.keyspace, r.key, cell, level).await?;
        Ok(pb::PutResponse { timestamp })
    }

    async fn delete_inner(&self, r: pb::DeleteRequest) -> Result<pb::DeleteResponse, KvError> {
        let level = convert::level(r.consistency)?;
        check_key(&r.key, "key")?;
        self.check_keyspace(&r.keyspace)?;
        let timestamp = self.timestamp(r.timestamp)?;
        self.write_one(&r.keyspace, r.key, Cell::tombstone(timestamp), level)
            .await?;
        Ok(pb::DeleteResponse { timestamp })
    }

    async fn multi_get_inner(
        &self,
        r: pb::MultiGetRequest,
    ) -> Result<pb::MultiGetResponse, KvError> {
        let level = convert::level(r.consistency)?;
        self.check_keyspace(&r.keyspace)?;
        if r.keys.len() > ITEMS_MAX {
            return Err(KvError::invalid_argument(
                "keys",
                format!("{} keys, above the limit of {ITEMS_MAX}", r.keys.len()),
            ));
        }
        for (i, k) in r.keys.iter().enumerate() {
            check_key(k, &format!("keys[{i}]"))?;
        }
        let now = self.node.clock.now_ms();
        let reads = r
            .keys
            .iter()
            .map(|k| self.node.coordinate_read(&r.keyspace, k.clone(), level));
        let outcomes = futures_util::future::join_all(reads).await;
        self.node.metrics.client_reads.add(r.keys.len() as u64);
        let results = (r.keys.into_iter().zip(outcomes))
            .map(|(key, outcome)| {
                use pb::key_result::Outcome;
                let outcome = match outcome {
                    Ok(cell) => match cell.and_then(|c| read_value(&c, now)) {
                        Some(v) => Outcome::Value(v),
                        None => Outcome::Missing(pb::Missing {}),
                    },
                    Err(e) => Outcome::Error(convert::error_to_pb(&e)),
                };
                pb::KeyResult {
                    key,
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(pb::MultiGetResponse { results })
    }

    async fn batch_inner(&self, r: pb::BatchRequest) -> Result<pb::BatchResponse, KvError> {
        let level = convert::level(r.consistency)?;
        self.check_keyspace(&r.keyspace)?;
        if r.mutations.len() > ITEMS_MAX {
            return Err(KvError::invalid_argument(
                "mutations",
                format!(
                    "{} mutations, above the limit of {ITEMS_MAX}",
                    r.mutations.len()
                ),
            ));
        }
        let timestamp = self.timestamp(r.timestamp)?;
        let mut writes: Vec<(usize, Bytes, Cell)> = Vec::with_capacity(r.mutations.len());
        for (i, m) in r.mutations.into_iter().enumerate() {
            let field = || format!("mutations[{i}]");
            check_key(&m.key, "key").map_err(|e| e.within(field()))?;
            let cell = match m.op {
                Some(pb::mutation::Op::Value(v)) => {
                    check_value(&v, "value").map_err(|e| e.within(field()))?;
                    let mut cell = Cell::value(timestamp, v);
                    cell.expires_at_ms = (self.expiry(m.ttl_ms.or(r.ttl_ms), "ttl_ms"))
                        .map_err(|e| e.within(field()))?;
                    cell
                }
                Some(pb::mutation::Op::Delete(_)) => Cell::tombstone(timestamp),
                None => {
                    return Err(KvError::invalid_argument(
                        field(),
                        "neither value nor delete is set",
                    ))
                }
            };
            // Later mutations of a key win: with one timestamp the merge rule cannot tell.
            writes.retain(|(_, k, _)| *k != m.key);
            writes.push((i, m.key, cell));
        }
        let calls = writes
            .iter()
            .map(|(_, k, c)| self.write_one(&r.keyspace, k.clone(), c.clone(), level));
        let outcomes = futures_util::future::join_all(calls).await;
        let failures = (writes.iter().zip(outcomes))
            .filter_map(|((i, _, _), o)| {
                o.err().map(|e| pb::MutationFailure {
                    index: *i as u32,
                    error: Some(convert::error_to_pb(&e)),
                })
            })
            .collect();
        Ok(pb::BatchResponse {
            timestamp,
            failures,
        })
    }

    async fn scan_inner(&self, r: pb::ScanRequest) -> Result<pb::ScanResponse, KvError> {
        let level = convert::level(r.consistency)?;
        self.check_keyspace(&r.keyspace)?;
        let range = r
            .range
            .ok_or_else(|| KvError::invalid_argument("range", "missing"))?;
        let range = client::decode_token_range(&range)
            .map_err(|(f, e)| KvError::invalid_argument(format!("range.{f}"), e.to_string()))?;
        let page_size = match r.page_size {
            0 => PAGE_SIZE_DEFAULT,
            n if n > PAGE_SIZE_MAX => {
                return Err(KvError::invalid_argument(
                    "page_size",
                    format!("{n}, above the limit of {PAGE_SIZE_MAX}"),
                ))
            }
            n => n,
        };
        let position = match r.paging_state.is_empty() {
            true => None,
            false => Some(Position::decode(&r.paging_state)?),
        };
        let page = (self.node)
            .coordinate_scan(&r.keyspace, range, level, page_size as usize, position)
            .await?;
        Ok(pb::ScanResponse {
            entries: page.entries,
            paging_state: page.next.map(|p| p.encode()).unwrap_or_default(),
        })
    }

    async fn inspect_inner(&self, r: pb::InspectRequest) -> Result<pb::InspectResponse, KvError> {
        check_key(&r.key, "key")?;
        self.check_keyspace(&r.keyspace)?;
        let route = self.node.route(&r.keyspace, &r.key)?;
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(self.node.config.coordinator.read_timeout_ms);
        let mut dcs = Vec::new();
        for d in route.layout.dcs() {
            let reads = d.replicas.iter().map(|&n| {
                let target = self.node.target(&route, n);
                let (node, ks, key) = (self.node.clone(), r.keyspace.clone(), r.key.clone());
                async move {
                    use pb::replica_cell::Outcome;
                    let read = ReplicaRead {
                        key: &key,
                        want_digest: false,
                        deadline,
                    };
                    let outcome = match node.read_replica(&target, &ks, read, Timer::Own).await {
                        Ok(crate::cluster::ReadResponse::Data(Some(c))) => {
                            Outcome::Cell(cell_to_pb(&c))
                        }
                        Ok(_) => Outcome::Missing(pb::Missing {}),
                        Err(e) => Outcome::Error(e.to_pb()),
                    };
                    (target, outcome)
                }
            });
            let replicas = (futures_util::future::join_all(reads).await.into_iter())
                .map(|(t, outcome)| pb::ReplicaCell {
                    rack: route
                        .view
                        .member(&t.id)
                        .map(|m| m.rack.clone())
                        .unwrap_or_default(),
                    node_id: t.id.clone(),
                    outcome: Some(outcome),
                })
                .collect();
            dcs.push(pb::DcReplicas {
                dc: d.dc.clone(),
                replicas,
            });
        }
        dcs.sort_by(|a, b| a.dc.cmp(&b.dc));
        Ok(pb::InspectResponse {
            token: client::encode_token(topology::token_of(&r.key)),
            key: r.key,
            dcs,
        })
    }

    fn describe_ring_inner(&self) -> pb::DescribeRingResponse {
        let view = self.node.members.view();
        let replaced: Vec<&topology::NodeId> = (view.members.values())
            .filter(|m| m.status == topology::NodeState::Normal)
            .filter_map(|m| m.replacing.as_ref())
            .collect();
        let nodes = (view.members.iter())
            .filter(|(id, m)| m.status != topology::NodeState::Left && !replaced.contains(id))
            .map(|(id, m)| {
                let liveness = match (
                    self.node.members.is_alive(id.as_str()),
                    self.node.members.phi(id.as_str()),
                ) {
                    (true, _) => pb::Liveness::Up,
                    (false, None) if *id != self.node.me => pb::Liveness::Unspecified,
                    (false, _) => pb::Liveness::Down,
                };
                pb::RingNode {
                    id: id.0.clone(),
                    dc: m.dc.clone(),
                    rack: m.rack.clone(),
                    client_address: m.addresses.client.clone(),
                    internode_address: m.addresses.internode.clone(),
                    state: convert::node_state_to_pb(m.status) as i32,
                    liveness: liveness as i32,
                    // A replacement owns nothing until it is NORMAL: listing the dead node's
                    // tokens twice would make clients' rings invalid.
                    tokens: match (m.status, &m.replacing) {
                        (topology::NodeState::Joining, Some(_)) => Vec::new(),
                        _ => m.tokens.iter().map(|t| client::encode_token(*t)).collect(),
                    },
                    load_bytes: m.load_bytes,
                }
            })
            .collect();
        pb::DescribeRingResponse {
            nodes,
            ring_epoch: view.epoch,
            local_dc: self.node.config.dc.clone(),
            token_function: client::TOKEN_FUNCTION.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl KeyValue for ClientService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let r = self.get_inner(request.into_inner()).await;
        self.reply(r)
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Reply<pb::PutResponse> {
        let r = self.put_inner(request.into_inner()).await;
        self.reply(r)
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let r = self.delete_inner(request.into_inner()).await;
        self.reply(r)
    }

    type PipelineStream = pipeline::Responses;

    async fn pipeline(
        &self,
        request: Request<tonic::Streaming<pb::PipelineRequest>>,
    ) -> Reply<Self::PipelineStream> {
        let responses = self.open_pipeline(request.into_inner());
        self.reply(Ok(responses))
    }

    async fn multi_get(
        &self,
        request: Request<pb::MultiGetRequest>,
    ) -> Reply<pb::MultiGetResponse> {
        let r = self.multi_get_inner(request.into_inner()).await;
        self.reply(r)
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Reply<pb::BatchResponse> {
        let r = self.batch_inner(request.into_inner()).await;
        self.reply(r)
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Reply<pb::ScanResponse> {
        let r = self.scan_inner(request.into_inner()).await;
        self.reply(r)
    }

    async fn create_keyspace(
        &self,
        request: Request<pb::CreateKeyspaceRequest>,
    ) -> Reply<pb::CreateKeyspaceResponse> {
        let r = request.into_inner();
        let result = match r.keyspace {
            None => Err(KvError::invalid_argument("keyspace", "missing")),
            Some(k) => (self
                .node
                .create_keyspace(&k.name, k.replication, r.if_not_exists)
                .await)
                .map(|(keyspace, created)| pb::CreateKeyspaceResponse {
                    keyspace: Some(keyspace),
                    created,
                }),
        };
        self.reply(result)
    }

    async fn describe_keyspace(
        &self,
        request: Request<pb::DescribeKeyspaceRequest>,
    ) -> Reply<pb::DescribeKeyspaceResponse> {
        let name = request.into_inner().name;
        let view = self.node.members.view();
        let result = match view.schema.get(&name) {
            Some(def) => Ok(pb::DescribeKeyspaceResponse {
                keyspace: Some(keyspace_to_pb(&name, def)),
            }),
            None => Err(KvError::KeyspaceNotFound(pb::KeyspaceNotFound {
                keyspace: name,
            })),
        };
        self.reply(result)
    }

    async fn drop_keyspace(
        &self,
        request: Request<pb::DropKeyspaceRequest>,
    ) -> Reply<pb::DropKeyspaceResponse> {
        let r = request.into_inner();
        let result = (self.node.drop_keyspace(&r.name, r.if_exists).await)
            .map(|dropped| pb::DropKeyspaceResponse { dropped });
        self.reply(result)
    }

    async fn list_keyspaces(
        &self,
        _request: Request<pb::ListKeyspacesRequest>,
    ) -> Reply<pb::ListKeyspacesResponse> {
        let view = self.node.members.view();
        let keyspaces = view
            .schema
            .live()
            .map(|(n, d)| keyspace_to_pb(n, d))
            .collect();
        self.reply(Ok(pb::ListKeyspacesResponse {
            keyspaces,
            schema_version: view.schema.version(),
        }))
    }

    async fn describe_ring(
        &self,
        _request: Request<pb::DescribeRingRequest>,
    ) -> Reply<pb::DescribeRingResponse> {
        self.reply(Ok(self.describe_ring_inner()))
    }

    async fn decommission(
        &self,
        request: Request<pb::DecommissionRequest>,
    ) -> Reply<pb::DecommissionResponse> {
        let result = match self.check_me(&request.into_inner().node_id) {
            Ok(()) => self.node.decommission().await,
            Err(e) => Err(e),
        };
        self.reply(result)
    }

    async fn cleanup(&self, request: Request<pb::CleanupRequest>) -> Reply<pb::CleanupResponse> {
        let result = match self.check_me(&request.into_inner().node_id) {
            Ok(()) => self.node.cleanup().await,
            Err(e) => Err(e),
        };
        self.reply(result)
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Reply<pb::RemoveNodeResponse> {
        let r = request.into_inner();
        let result = self.node.remove_node(&r.node_id).await;
        self.reply(result)
    }

    async fn netstats(
        &self,
        _request: Request<pb::NetstatsRequest>,
    ) -> Reply<pb::NetstatsResponse> {
        let view = self.node.members.view();
        let state = view
            .member(&self.node.me.0)
            .map_or(pb::NodeState::Unspecified, |m| {
                convert::node_state_to_pb(m.status)
            });
        self.reply(Ok(pb::NetstatsResponse {
            state: state as i32,
            streams: self.node.streams.snapshot(),
        }))
    }

    async fn inspect(&self, request: Request<pb::InspectRequest>) -> Reply<pb::InspectResponse> {
        let r = self.inspect_inner(request.into_inner()).await;
        self.reply(r)
    }

    type RepairStream = tonic::codegen::BoxStream<pb::RepairProgress>;

    async fn repair(&self, request: Request<pb::RepairRequest>) -> Reply<Self::RepairStream> {
        let jobs = match self.node.plan_repair(&request.into_inner()) {
            Ok(jobs) => jobs,
            Err(e) => return self.reply(Err(e)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(REPAIR_PROGRESS_QUEUE);
        tokio::spawn(self.node.clone().run_repair(jobs, tx));
        let stream: Self::RepairStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.reply(Ok(stream))
    }

    async fn repair_status(
        &self,
        _request: Request<pb::RepairStatusRequest>,
    ) -> Reply<pb::RepairStatusResponse> {
        self.reply(Ok(self.node.repair_status()))
    }
}
