//! In-process fake clusters for tests of the SDK and of kvctl: real tonic servers on loopback
//! ports that answer like nodes of one cluster, sharing one store, and that record which node
//! received each request. No replication, no consistency: every node sees the same data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use topology::{token_of, Node, NodeId, NodeState, Ring, RingState, Token};

use crate::pb::v1::key_value_server::{KeyValue, KeyValueServer};
use crate::pb::v1::{self as pb, ConsistencyLevel};
use crate::{
    decode_token_range, encode_token, KvError, MAX_MESSAGE_BYTES, PIPELINE_OPS_MAX,
    RING_EPOCH_HEADER, TOKEN_FUNCTION,
};

/// Responses a fake pipeline session buffers for a slow client.
const SESSION_RESPONSES_MAX: usize = 16;

/// One request as a fake node received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The id of the node that received it.
    pub node: String,
    /// The RPC, e.g. `"Get"`.
    pub method: &'static str,
    /// The key, for single-key calls.
    pub key: Option<Bytes>,
}

/// A node to start.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: String,
    pub dc: String,
    pub rack: String,
}

struct Shared {
    ring: Mutex<pb::DescribeRingResponse>,
    schema: Mutex<BTreeMap<String, pb::Keyspace>>,
    data: Mutex<BTreeMap<(String, Bytes), pb::Cell>>,
    /// Cells that one replica holds instead of the shared one, for Inspect.
    divergent: Mutex<HashMap<(String, String, Bytes), Option<pb::Cell>>>,
    stopped: Mutex<BTreeSet<String>>,
    log: Mutex<Vec<Received>>,
    fail_with: Mutex<Option<KvError>>,
    clock: AtomicU64,
    /// While true, pipeline sessions hold the ops they read unanswered.
    stall: watch::Sender<bool>,
    /// Whether Pipeline answers UNIMPLEMENTED, as a node of a version without it.
    no_pipeline: AtomicBool,
}

struct Running {
    id: String,
    address: SocketAddr,
    /// Bumped to end the node's open pipeline sessions.
    breaks: watch::Sender<u64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// A running fake cluster. Dropping it stops nothing by itself; call [`FakeCluster::stop`]
/// for a node, or let the test's runtime end.
pub struct FakeCluster {
    shared: Arc<Shared>,
    nodes: Vec<Running>,
}

impl FakeCluster {
    /// Nodes `DC-nI` for each `(DC, count)`, racks `r1`.. `r3` in turn, 16 vnodes each.
    pub async fn start_dcs(dcs: &[(&str, usize)]) -> FakeCluster {
        let specs: Vec<NodeSpec> = dcs
            .iter()
            .flat_map(|&(dc, count)| {
                (1..=count).map(move |i| NodeSpec {
                    id: format!("{dc}-n{i}"),
                    dc: dc.to_owned(),
                    rack: format!("r{}", (i - 1) % 3 + 1),
                })
            })
            .collect();
        FakeCluster::start(&specs, 16).await
    }

    /// Starts one server per spec on `127.0.0.1` with a free port.
    pub async fn start(specs: &[NodeSpec], vnodes: usize) -> FakeCluster {
        let mut listeners = Vec::with_capacity(specs.len());
        let mut ring_nodes = Vec::with_capacity(specs.len());
        for spec in specs {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            let address = listener.local_addr().expect("bound address");
            let mut tokens: Vec<Token> = (0..vnodes)
                .map(|v| token_of(format!("{}#{v}", spec.id).as_bytes()))
                .collect();
            tokens.sort();
            ring_nodes.push(pb::RingNode {
                id: spec.id.clone(),
                dc: spec.dc.clone(),
                rack: spec.rack.clone(),
                client_address: address.to_string(),
                internode_address: String::new(),
                state: pb::NodeState::Normal as i32,
                liveness: pb::Liveness::Up as i32,
                tokens: tokens.into_iter().map(encode_token).collect(),
                load_bytes: None,
            });
            listeners.push((spec.clone(), listener, address));
        }
        let shared = Arc::new(Shared {
            ring: Mutex::new(pb::DescribeRingResponse {
                nodes: ring_nodes,
                ring_epoch: 1,
                local_dc: String::new(),
                token_function: TOKEN_FUNCTION.to_owned(),
            }),
            schema: Mutex::new(BTreeMap::new()),
            data: Mutex::new(BTreeMap::new()),
            divergent: Mutex::new(HashMap::new()),
            stopped: Mutex::new(BTreeSet::new()),
            log: Mutex::new(Vec::new()),
            fail_with: Mutex::new(None),
            clock: AtomicU64::new(0),
            stall: watch::Sender::new(false),
            no_pipeline: AtomicBool::new(false),
        });
        let nodes = listeners
            .into_iter()
            .map(|(spec, listener, address)| {
                let breaks = watch::Sender::new(0);
                let service = KeyValueServer::new(FakeNode {
                    id: spec.id.clone(),
                    dc: spec.dc.clone(),
                    shared: shared.clone(),
                    breaks: breaks.subscribe(),
                })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(
                    Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                            stopped.await.ok();
                        }),
                );
                Running {
                    id: spec.id,
                    address,
                    breaks,
                    stop: Some(stop),
                    task: Some(task),
                }
            })
            .collect();
        FakeCluster { shared, nodes }
    }

    /// Every node's client address, in start order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.to_string()).collect()
    }

    /// The client address of a node.
    pub fn address(&self, id: &str) -> String {
        self.running(id).address.to_string()
    }

    /// The id of the node at a client address.
    pub fn id_at(&self, address: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.address.to_string() == address)
            .map(|n| n.id.clone())
    }

    /// Stops a node's server: its port refuses connections from now on, and its open
    /// pipeline sessions end with UNAVAILABLE without answering another op.
    pub async fn stop(&mut self, id: &str) {
        self.shared.stopped.lock().unwrap().insert(id.to_owned());
        self.break_pipelines(id);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("a node of the cluster");
        if let Some(stop) = node.stop.take() {
            stop.send(()).ok();
        }
        if let Some(task) = node.task.take() {
            task.abort();
            task.await.ok();
        }
    }

    /// Defines a keyspace directly, as if created earlier.
    pub fn create_keyspace(&self, name: &str, replication: &[(&str, u32)]) {
        self.shared.schema.lock().unwrap().insert(
            name.to_owned(),
            pb::Keyspace {
                name: name.to_owned(),
                replication: replication
                    .iter()
                    .map(|&(dc, rf)| (dc.to_owned(), rf))
                    .collect(),
                schema_version: 1,
            },
        );
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn clear_received(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Makes every data request (Get, Put, Delete, MultiGet, Batch, Scan) fail with `error`,
    /// or succeed again with `None`.
    pub fn fail_with(&self, error: Option<KvError>) {
        *self.shared.fail_with.lock().unwrap() = error;
    }

    /// Ends the node's open pipeline sessions with UNAVAILABLE, as a broken connection would
    /// end them; ops they read but did not answer stay unanswered.
    pub fn break_pipelines(&self, id: &str) {
        self.running(id).breaks.send_modify(|n| *n += 1);
    }

    /// Makes every pipeline session hold the ops it reads unanswered (`true`) or answer them
    /// again (`false`).
    pub fn stall_pipelines(&self, stall: bool) {
        self.shared.stall.send_replace(stall);
    }

    /// Makes Pipeline answer UNIMPLEMENTED (`true`), as a node of a version without it.
    pub fn refuse_pipeline(&self, refuse: bool) {
        self.shared.no_pipeline.store(refuse, Ordering::Relaxed);
    }

    /// Sets the ring epoch that DescribeRing and every response header report.
    pub fn set_ring_epoch(&self, epoch: u64) {
        self.shared.ring.lock().unwrap().ring_epoch = epoch;
    }

    /// Sets what DescribeRing says about a node's liveness.
    pub fn set_liveness(&self, id: &str, liveness: pb::Liveness) {
        let mut ring = self.shared.ring.lock().unwrap();
        let node = ring.nodes.iter_mut().find(|n| n.id == id).expect("a node");
        node.liveness = liveness as i32;
    }

    /// Makes one replica hold `cell` (or nothing) for a key instead of the shared cell, as
    /// Inspect shows it.
    pub fn set_replica_cell(&self, node: &str, keyspace: &str, key: &[u8], cell: Option<pb::Cell>) {
        self.shared.divergent.lock().unwrap().insert(
            (
                node.to_owned(),
                keyspace.to_owned(),
                Bytes::copy_from_slice(key),
            ),
            cell,
        );
    }

    /// The ids of a key's replicas in one DC, in preference-list order.
    pub fn replicas(&self, keyspace: &str, key: &[u8], dc: &str) -> Vec<String> {
        let ring = self.shared.ring(keyspace).expect("a placeable keyspace");
        let placement = ring.placement(keyspace).expect("keyspace in ring");
        placement
            .replicas(token_of(key))
            .in_dc(dc)
            .iter()
            .map(|&i| ring.node(i).id.0.clone())
            .collect()
    }

    fn running(&self, id: &str) -> &Running {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("a node of the cluster")
    }
}

impl Shared {
    fn ring(&self, keyspace: &str) -> Result<Ring, KvError> {
        let ks = self.keyspace(keyspace)?;
        let ring = self.ring.lock().unwrap();
        let nodes = ring
            .nodes
            .iter()
            .map(|n| Node {
                id: NodeId(n.id.clone()),
                address: n.client_address.clone(),
                dc: n.dc.clone(),
                rack: n.rack.clone(),
                state: NodeState::Normal,
                tokens: n
                    .tokens
                    .iter()
                    .map(|t| crate::decode_token(t).expect("16-byte token"))
                    .collect(),
            })
            .collect();
        let state = RingState {
            epoch: ring.ring_epoch,
            keyspaces: [(
                keyspace.to_owned(),
                topology::Keyspace::new(
                    ks.replication
                        .iter()
                        .map(|(dc, &rf)| (dc.clone(), rf as usize)),
                ),
            )]
            .into(),
            nodes,
        };
        Ring::new(state).map_err(|e| KvError::invalid_argument("keyspace", e.to_string()))
    }

    fn keyspace(&self, name: &str) -> Result<pb::Keyspace, KvError> {
        self.schema
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| {
                KvError::KeyspaceNotFound(pb::KeyspaceNotFound {
                    keyspace: name.to_owned(),
                })
            })
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn timestamp(&self, given: Option<u64>) -> u64 {
        given.unwrap_or_else(|| {
            let next = Self::now_ms() << 16;
            let previous = self.clock.fetch_max(next, Ordering::SeqCst);
            if previous >= next {
                self.clock.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                next
            }
        })
    }

    fn live(cell: &pb::Cell) -> Option<pb::ReadValue> {
        if cell.expires_at_ms.is_some_and(|at| at <= Self::now_ms()) {
            return None;
        }
        match &cell.content {
            Some(pb::cell::Content::Value(value)) => Some(pb::ReadValue {
                value: value.clone(),
                timestamp: cell.timestamp,
                expires_at_ms: cell.expires_at_ms,
            }),
            _ => None,
        }
    }

    fn write(
        &self,
        keyspace: &str,
        key: Bytes,
        content: pb::cell::Content,
        timestamp: u64,
        ttl_ms: Option<u64>,
    ) {
        let cell = pb::Cell {
            timestamp,
            content: Some(content),
            expires_at_ms: ttl_ms.map(|ttl| Self::now_ms() + ttl),
            causal: Bytes::new(),
        };
        let mut data = self.data.lock().unwrap();
        let slot = data
            .entry((keyspace.to_owned(), key))
            .or_insert_with(|| cell.clone());
        if slot.timestamp <= cell.timestamp {
            *slot = cell;
        }
    }
}

#[derive(Clone)]
struct FakeNode {
    id: String,
    dc: String,
    shared: Arc<Shared>,
    breaks: watch::Receiver<u64>,
}

fn check_level(consistency: i32, write: bool) -> Result<(), KvError> {
    match ConsistencyLevel::try_from(consistency) {
        Ok(ConsistencyLevel::Unspecified) | Err(_) => Err(KvError::invalid_argument(
            "consistency",
            "not a consistency level",
        )),
        Ok(ConsistencyLevel::Any) if !write => Err(KvError::invalid_argument(
            "consistency",
            "ANY is for writes only",
        )),
        Ok(_) => Ok(()),
    }
}

fn check_key(field: &str, key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() || key.len() > crate::MAX_KEY_BYTES {
        return Err(KvError::invalid_argument(
            field,
            format!("{} bytes, outside 1..={}", key.len(), crate::MAX_KEY_BYTES),
        ));
    }
    Ok(())
}

impl FakeNode {
    fn get_op(&self, r: pb::GetRequest) -> Result<pb::GetResponse, KvError> {
        self.record("Get", Some(&r.key));
        self.injected()?;
        check_level(r.consistency, false)?;
        self.shared.keyspace(&r.keyspace)?;
        check_key("key", &r.key)?;
        let data = self.shared.data.lock().unwrap();
        let value = data.get(&(r.keyspace, r.key)).and_then(Shared::live);
        Ok(pb::GetResponse { value })
    }

    fn put_op(&self, r: pb::PutRequest) -> Result<pb::PutResponse, KvError> {
        self.record("Put", Some(&r.key));
        self.injected()?;
        check_level(r.consistency, true)?;
        self.shared.keyspace(&r.keyspace)?;
        check_key("key", &r.key)?;
        if r.value.len() > crate::MAX_VALUE_BYTES {
            return Err(KvError::invalid_argument("value", "above 16 MiB"));
        }
        if r.ttl_ms == Some(0) {
            return Err(KvError::invalid_argument(
                "ttl_ms",
                "0 is not a time to live",
            ));
        }
        let timestamp = self.shared.timestamp(r.timestamp);
        self.shared.write(
            &r.keyspace,
            r.key,
            pb::cell::Content::Value(r.value),
            timestamp,
            r.ttl_ms,
        );
        Ok(pb::PutResponse { timestamp })
    }

    fn delete_op(&self, r: pb::DeleteRequest) -> Result<pb::DeleteResponse, KvError> {
        self.record("Delete", Some(&r.key));
        self.injected()?;
        check_level(r.consistency, true)?;
        self.shared.keyspace(&r.keyspace)?;
        check_key("key", &r.key)?;
        let timestamp = self.shared.timestamp(r.timestamp);
        self.shared.write(
            &r.keyspace,
            r.key,
            pb::cell::Content::Tombstone(pb::Tombstone {}),
            timestamp,
            None,
        );
        Ok(pb::DeleteResponse { timestamp })
    }

    /// Answers each message of a session in one response, in order, unless stalled; ends with
    /// UNAVAILABLE when the session is broken.
    async fn serve_session(
        self,
        mut requests: Streaming<pb::PipelineRequest>,
        responses: mpsc::Sender<Result<pb::PipelineResponse, Status>>,
    ) {
        let mut breaks = self.breaks.clone();
        breaks.mark_unchanged();
        let mut stall = self.shared.stall.subscribe();
        let broken = Status::unavailable(format!("{}: pipeline session broken", self.id));
        loop {
            // Biased, so that nothing is answered once the session is broken.
            let request = tokio::select! {
                biased;
                _ = breaks.changed() => None,
                message = requests.message() => match message {
                    Ok(Some(request)) => Some(request),
                    Ok(None) | Err(_) => return,
                },
            };
            let released = match request {
                Some(_) => tokio::select! {
                    biased;
                    _ = breaks.changed() => false,
                    _ = stall.wait_for(|stalled| !*stalled) => true,
                },
                None => false,
            };
            let response = match request.filter(|_| released) {
                Some(request) => self.answer_ops(request),
                None => Err(broken.clone()),
            };
            let end = response.is_err();
            if responses.send(response).await.is_err() || end {
                return;
            }
        }
    }

    fn answer_ops(&self, request: pb::PipelineRequest) -> Result<pb::PipelineResponse, Status> {
        use pb::pipeline_op::Op;
        use pb::pipeline_result::Result as Outcome;
        if request.ops.len() > PIPELINE_OPS_MAX {
            return Err(KvError::invalid_argument("ops", "too many").into_status());
        }
        let results = request
            .ops
            .into_iter()
            .map(|op| {
                let outcome = match op.op {
                    Some(Op::Get(r)) => self.get_op(r).map(Outcome::Get),
                    Some(Op::Put(r)) => self.put_op(r).map(Outcome::Put),
                    Some(Op::Delete(r)) => self.delete_op(r).map(Outcome::Delete),
                    None => Err(KvError::invalid_argument("op", "none set")),
                };
                pb::PipelineResult {
                    id: op.id,
                    result: Some(outcome.unwrap_or_else(|e| Outcome::Error(e.into()))),
                }
            })
            .collect();
        Ok(pb::PipelineResponse {
            results,
            ring_epoch: self.shared.ring.lock().unwrap().ring_epoch,
            closed: None,
        })
    }

    fn record(&self, method: &'static str, key: Option<&Bytes>) {
        self.shared.log.lock().unwrap().push(Received {
            node: self.id.clone(),
            method,
            key: key.cloned(),
        });
    }

    fn injected(&self) -> Result<(), KvError> {
        match self.shared.fail_with.lock().unwrap().clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The answer with the ring epoch header, as a real node sends it on every response.
    fn answer<T>(&self, result: Result<T, KvError>) -> Result<Response<T>, Status> {
        let epoch = MetadataValue::from(self.shared.ring.lock().unwrap().ring_epoch);
        match result {
            Ok(message) => {
                let mut response = Response::new(message);
                response.metadata_mut().insert(RING_EPOCH_HEADER, epoch);
                Ok(response)
            }
            Err(error) => {
                let mut status = error.into_status();
                status.metadata_mut().insert(RING_EPOCH_HEADER, epoch);
                Err(status)
            }
        }
    }

    fn scan(&self, r: pb::ScanRequest) -> Result<pb::ScanResponse, KvError> {
        check_level(r.consistency, false)?;
        self.shared.keyspace(&r.keyspace)?;
        let range = r.range.unwrap_or_default();
        let range = decode_token_range(&range).map_err(|(bound, e)| {
            KvError::invalid_argument(format!("range.{bound}"), e.to_string())
        })?;
        if r.page_size > 10_000 {
            return Err(KvError::invalid_argument("page_size", "above 10000"));
        }
        let page_size = if r.page_size == 0 {
            100
        } else {
            r.page_size as usize
        };
        // Position clockwise after the range's start, so a wrapping range reads in ring order.
        let position = |t: Token| t.0.wrapping_sub(range.start.0).wrapping_sub(1);
        let after = match r.paging_state.len() {
            0 => None,
            n if n >= 16 => {
                let token = crate::decode_token(&r.paging_state[..16]).expect("16 bytes");
                Some((position(token), r.paging_state.slice(16..)))
            }
            _ => {
                return Err(KvError::invalid_argument(
                    "paging_state",
                    "not from this node",
                ))
            }
        };
        let data = self.shared.data.lock().unwrap();
        let mut entries: Vec<(u128, Bytes, Token, pb::ReadValue)> = data
            .iter()
            .filter(|((ks, _), _)| *ks == r.keyspace)
            .filter_map(|((_, key), cell)| {
                let token = token_of(key);
                let value = Shared::live(cell)?;
                range
                    .contains(token)
                    .then(|| (position(token), key.clone(), token, value))
            })
            .filter(|(pos, key, _, _)| after.as_ref().is_none_or(|(p, k)| (*pos, key) > (*p, k)))
            .collect();
        entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let more = entries.len() > page_size;
        entries.truncate(page_size);
        let paging_state = match (more, entries.last()) {
            (true, Some((_, key, token, _))) => {
                let mut state = encode_token(*token).to_vec();
                state.extend_from_slice(key);
                Bytes::from(state)
            }
            _ => Bytes::new(),
        };
        Ok(pb::ScanResponse {
            entries: entries
                .into_iter()
                .map(|(_, key, token, value)| pb::ScanEntry {
                    key,
                    token: encode_token(token),
                    value: Some(value),
                })
                .collect(),
            paging_state,
        })
    }

    fn inspect(&self, r: pb::InspectRequest) -> Result<pb::InspectResponse, KvError> {
        check_key("key", &r.key)?;
        let ring = self.shared.ring(&r.keyspace)?;
        let placement = ring.placement(&r.keyspace).expect("keyspace in ring");
        let token = token_of(&r.key);
        let replicas = placement.replicas(token);
        let shared_cell = self
            .shared
            .data
            .lock()
            .unwrap()
            .get(&(r.keyspace.clone(), r.key.clone()))
            .cloned();
        let divergent = self.shared.divergent.lock().unwrap();
        let stopped = self.shared.stopped.lock().unwrap();
        let dcs = placement
            .replication()
            .map(|(dc, _)| pb::DcReplicas {
                dc: dc.to_owned(),
                replicas: replicas
                    .in_dc(dc)
                    .iter()
                    .map(|&i| {
                        let node = ring.node(i);
                        let cell = divergent
                            .get(&(node.id.0.clone(), r.keyspace.clone(), r.key.clone()))
                            .cloned()
                            .unwrap_or_else(|| shared_cell.clone());
                        let outcome = if stopped.contains(node.id.as_str()) {
                            pb::replica_cell::Outcome::Error(pb::Error {
                                code: tonic::Code::Unavailable as i32,
                                message: format!("{} is unreachable", node.id),
                                detail: None,
                            })
                        } else {
                            match cell {
                                Some(cell) => pb::replica_cell::Outcome::Cell(cell),
                                None => pb::replica_cell::Outcome::Missing(pb::Missing {}),
                            }
                        };
                        pb::ReplicaCell {
                            node_id: node.id.0.clone(),
                            rack: node.rack.clone(),
                            outcome: Some(outcome),
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(pb::InspectResponse {
            key: r.key,
            token: encode_token(token),
            dcs,
        })
    }
}

#[tonic::async_trait]
impl KeyValue for FakeNode {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.answer(self.get_op(request.into_inner()))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.answer(self.put_op(request.into_inner()))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.answer(self.delete_op(request.into_inner()))
    }

    type PipelineStream = tonic::codegen::BoxStream<pb::PipelineResponse>;

    async fn pipeline(
        &self,
        request: Request<Streaming<pb::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        self.record("Pipeline", None);
        if self.shared.no_pipeline.load(Ordering::Relaxed) {
            return Err(Status::unimplemented("this fake node has no Pipeline"));
        }
        // A stopped node's connections may not have closed yet.
        if self.shared.stopped.lock().unwrap().contains(&self.id) {
            return Err(Status::unavailable(format!("{} is stopped", self.id)));
        }
        let (responses, receiver) = mpsc::channel(SESSION_RESPONSES_MAX);
        tokio::spawn(self.clone().serve_session(request.into_inner(), responses));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn multi_get(
        &self,
        request: Request<pb::MultiGetRequest>,
    ) -> Result<Response<pb::MultiGetResponse>, Status> {
        let r = request.into_inner();
        self.record("MultiGet", None);
        self.answer((|| {
            self.injected()?;
            check_level(r.consistency, false)?;
            self.shared.keyspace(&r.keyspace)?;
            let data = self.shared.data.lock().unwrap();
            let results = r
                .keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| {
                    let outcome = match check_key(&format!("keys[{i}]"), &key) {
                        Err(e) => pb::key_result::Outcome::Error(e.into()),
                        Ok(()) => match data
                            .get(&(r.keyspace.clone(), key.clone()))
                            .and_then(Shared::live)
                        {
                            Some(v) => pb::key_result::Outcome::Value(v),
                            None => pb::key_result::Outcome::Missing(pb::Missing {}),
                        },
                    };
                    pb::KeyResult {
                        key,
                        outcome: Some(outcome),
                    }
                })
                .collect();
            Ok(pb::MultiGetResponse { results })
        })())
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let r = request.into_inner();
        self.record("Batch", None);
        self.answer((|| {
            self.injected()?;
            check_level(r.consistency, true)?;
            self.shared.keyspace(&r.keyspace)?;
            for (i, m) in r.mutations.iter().enumerate() {
                check_key(&format!("mutations[{i}].key"), &m.key)?;
                if m.op.is_none() {
                    return Err(KvError::invalid_argument(
                        format!("mutations[{i}].op"),
                        "neither value nor delete",
                    ));
                }
            }
            let timestamp = self.shared.timestamp(r.timestamp);
            for m in r.mutations {
                let (content, ttl) = match m.op.expect("checked") {
                    pb::mutation::Op::Value(v) => {
                        (pb::cell::Content::Value(v), m.ttl_ms.or(r.ttl_ms))
                    }
                    pb::mutation::Op::Delete(t) => (pb::cell::Content::Tombstone(t), None),
                };
                self.shared
                    .write(&r.keyspace, m.key, content, timestamp, ttl);
            }
            Ok(pb::BatchResponse {
                timestamp,
                failures: Vec::new(),
            })
        })())
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let r = request.into_inner();
        self.record("Scan", None);
        self.answer(self.injected().and_then(|()| self.scan(r)))
    }

    async fn create_keyspace(
        &self,
        request: Request<pb::CreateKeyspaceRequest>,
    ) -> Result<Response<pb::CreateKeyspaceResponse>, Status> {
        let r = request.into_inner();
        self.record("CreateKeyspace", None);
        self.answer((|| {
            let mut wanted = r
                .keyspace
                .ok_or_else(|| KvError::invalid_argument("keyspace", "missing"))?;
            let name_ok = !wanted.name.is_empty()
                && wanted.name.len() <= 48
                && wanted
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !wanted.name.as_bytes()[0].is_ascii_digit();
            if !name_ok {
                return Err(KvError::invalid_argument(
                    "keyspace.name",
                    "1 to 48 letters, digits or _, not starting with a digit",
                ));
            }
            if wanted.replication.is_empty() {
                return Err(KvError::invalid_argument(
                    "keyspace.replication",
                    "at least one DC",
                ));
            }
            let dcs: BTreeSet<String> = self
                .shared
                .ring
                .lock()
                .unwrap()
                .nodes
                .iter()
                .map(|n| n.dc.clone())
                .collect();
            for (dc, &rf) in &wanted.replication {
                if rf == 0 || !dcs.contains(dc) {
                    return Err(KvError::invalid_argument(
                        format!("keyspace.replication[{dc}]"),
                        if rf == 0 {
                            "a factor of at least 1".to_owned()
                        } else {
                            format!("no DC {dc} in the cluster")
                        },
                    ));
                }
            }
            let mut schema = self.shared.schema.lock().unwrap();
            if let Some(existing) = schema.get(&wanted.name) {
                if r.if_not_exists {
                    return Ok(pb::CreateKeyspaceResponse {
                        keyspace: Some(existing.clone()),
                        created: false,
                    });
                }
                return Err(KvError::KeyspaceExists(pb::KeyspaceExists {
                    existing: Some(existing.clone()),
                }));
            }
            wanted.schema_version =
                schema.values().map(|k| k.schema_version).max().unwrap_or(0) + 1;
            schema.insert(wanted.name.clone(), wanted.clone());
            Ok(pb::CreateKeyspaceResponse {
                keyspace: Some(wanted),
                created: true,
            })
        })())
    }

    async fn describe_keyspace(
        &self,
        request: Request<pb::DescribeKeyspaceRequest>,
    ) -> Result<Response<pb::DescribeKeyspaceResponse>, Status> {
        let r = request.into_inner();
        self.record("DescribeKeyspace", None);
        self.answer(
            self.shared
                .keyspace(&r.name)
                .map(|k| pb::DescribeKeyspaceResponse { keyspace: Some(k) }),
        )
    }

    async fn drop_keyspace(
        &self,
        request: Request<pb::DropKeyspaceRequest>,
    ) -> Result<Response<pb::DropKeyspaceResponse>, Status> {
        let r = request.into_inner();
        self.record("DropKeyspace", None);
        let dropped = self.shared.schema.lock().unwrap().remove(&r.name).is_some();
        self.answer(if dropped || r.if_exists {
            Ok(pb::DropKeyspaceResponse { dropped })
        } else {
            self.shared
                .keyspace(&r.name)
                .map(|_| pb::DropKeyspaceResponse { dropped })
        })
    }

    async fn list_keyspaces(
        &self,
        _: Request<pb::ListKeyspacesRequest>,
    ) -> Result<Response<pb::ListKeyspacesResponse>, Status> {
        self.record("ListKeyspaces", None);
        let schema = self.shared.schema.lock().unwrap();
        self.answer(Ok(pb::ListKeyspacesResponse {
            keyspaces: schema.values().cloned().collect(),
            schema_version: schema.values().map(|k| k.schema_version).max().unwrap_or(0),
        }))
    }

    async fn describe_ring(
        &self,
        _: Request<pb::DescribeRingRequest>,
    ) -> Result<Response<pb::DescribeRingResponse>, Status> {
        self.record("DescribeRing", None);
        let mut ring = self.shared.ring.lock().unwrap().clone();
        ring.local_dc = self.dc.clone();
        self.answer(Ok(ring))
    }

    async fn decommission(
        &self,
        _: Request<pb::DecommissionRequest>,
    ) -> Result<Response<pb::DecommissionResponse>, Status> {
        self.record("Decommission", None);
        Err(Status::unimplemented(
            "the fake cluster has no topology changes",
        ))
    }

    async fn remove_node(
        &self,
        _: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.record("RemoveNode", None);
        Err(Status::unimplemented(
            "the fake cluster has no topology changes",
        ))
    }

    async fn cleanup(
        &self,
        _: Request<pb::CleanupRequest>,
    ) -> Result<Response<pb::CleanupResponse>, Status> {
        self.record("Cleanup", None);
        Err(Status::unimplemented(
            "the fake cluster has no topology changes",
        ))
    }

    async fn netstats(
        &self,
        _: Request<pb::NetstatsRequest>,
    ) -> Result<Response<pb::NetstatsResponse>, Status> {
        self.record("Netstats", None);
        self.answer(Ok(pb::NetstatsResponse {
            state: pb::NodeState::Normal as i32,
            streams: Vec::new(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let r = request.into_inner();
        self.record("Inspect", Some(&r.key));
        self.answer(self.inspect(r))
    }

    type RepairStream = tonic::codegen::BoxStream<pb::RepairProgress>;

    async fn repair(
        &self,
        _: Request<pb::RepairRequest>,
    ) -> Result<Response<Self::RepairStream>, Status> {
        Err(Status::unimplemented("the fake node does not repair"))
    }

    async fn repair_status(
        &self,
        _: Request<pb::RepairStatusRequest>,
    ) -> Result<Response<pb::RepairStatusResponse>, Status> {
        Err(Status::unimplemented(
            "the fake node keeps no repair history",
        ))
    }
}
