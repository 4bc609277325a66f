//! The Rust SDK: a token-aware, pooled, retrying client of the `KeyValue` service.
//!
//! [`Client::connect`] asks one of its endpoints for the ring (DescribeRing), then sends each
//! key's request to a replica of that key in the local DC, so the coordinator is also a replica
//! and saves a hop. Requests share a few HTTP/2 channels per node, so one `Client` keeps many
//! requests in flight; cloning it is cheap and clones share everything. See `docs/sdk.md`.

mod attempt;
mod error;
mod key_op;
mod pipeline;
mod pool;
mod routing;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use topology::{token_of, TokenRange};

pub use error::{ClientError, EndpointError, Result};
pub use routing::ring_state;

use self::attempt::{Attempt, Failure};
use self::key_op::{pipelined, KeyOp};
use self::pool::{NodeConns, Pool};
use self::routing::Topology;
use crate::pb::v1::{self as pb, key_value_client::KeyValueClient, ConsistencyLevel};
use crate::{encode_token_range, KvError};

/// How a [`Client`] connects, routes and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of some nodes' client service; any one that answers is enough.
    pub endpoints: Vec<String>,
    /// The DC whose replicas serve this client; absent means the DC of the node that answered
    /// the first DescribeRing.
    pub local_dc: Option<String>,
    /// HTTP/2 connections per node; each carries many concurrent requests.
    pub channels_per_node: usize,
    /// How long to wait for a TCP connection to a node.
    pub connect_timeout: Duration,
    /// Deadline of each attempt, also sent to the coordinator (`grpc-timeout`) so it stops
    /// waiting for replicas in time; `None` leaves it to the node's defaults.
    pub request_timeout: Option<Duration>,
    /// How many other nodes an idempotent request tries after a node is unreachable.
    pub read_retries: usize,
    /// How long a node that failed at the transport level goes to the back of the line.
    pub down_for: Duration,
    /// Send Get, Put and Delete through one Pipeline session per node, many ops per HTTP/2
    /// message, rather than one unary call each; a node without Pipeline gets unary calls.
    pub pipelining: bool,
    /// Carry pipeline sessions in frames on a TCP connection of their own rather than as a gRPC
    /// stream (no HTTP/2 work per message on either end). Turn it off when something between
    /// client and nodes speaks only gRPC (an HTTP/2 proxy); a node that does not serve framed
    /// sessions gets gRPC ones anyway.
    pub framed_sessions: bool,
}

impl ClientOptions {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        ClientOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            local_dc: None,
            channels_per_node: 2,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Some(Duration::from_secs(10)),
            read_retries: 2,
            down_for: Duration::from_secs(5),
            pipelining: true,
            framed_sessions: true,
        }
    }
}

/// Options of a single-key write.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    pub consistency: ConsistencyLevel,
    /// Time to live; absent means forever.
    pub ttl: Option<Duration>,
    /// A client-chosen hybrid-logical-clock timestamp (`ms << 16 | counter`). With one, the
    /// write is idempotent and is retried on another node when a node is unreachable.
    pub timestamp: Option<u64>,
}

impl WriteOptions {
    pub fn new(consistency: ConsistencyLevel) -> Self {
        WriteOptions {
            consistency,
            ttl: None,
            timestamp: None,
        }
    }
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions::new(ConsistencyLevel::LocalQuorum)
    }
}

/// What a Batch did.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOutcome {
    /// The timestamp of every mutation.
    pub timestamp: u64,
    /// Mutations that missed their level, by index in the request.
    pub failures: Vec<(u32, KvError)>,
}

impl pb::Mutation {
    /// Store `value` under `key`.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        pb::Mutation {
            key: key.into(),
            op: Some(pb::mutation::Op::Value(value.into())),
            ttl_ms: None,
        }
    }

    /// Delete `key`.
    pub fn delete(key: impl Into<Bytes>) -> Self {
        pb::Mutation {
            key: key.into(),
            op: Some(pb::mutation::Op::Delete(pb::Tombstone {})),
            ttl_ms: None,
        }
    }
}

/// A client of the cluster. Cheap to clone; clones share connections and the ring.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    pool: Pool,
    topology: RwLock<Arc<Topology>>,
    /// Replication per keyspace, for routing. The cell makes concurrent first requests for a
    /// keyspace share one DescribeKeyspace.
    /// Read on every keyed request, written when a keyspace is first used or forgotten.
    keyspaces: RwLock<HashMap<String, KeyspaceCell>>,
    refreshing: AtomicBool,
    rotation: AtomicUsize,
}

/// A keyspace's replication once learned; concurrent first requests share one
/// DescribeKeyspace.
type KeyspaceCell = Arc<OnceCell<Arc<topology::Keyspace>>>;

/// Where a request should go.
enum Route<'a> {
    /// Any node, local DC first.
    Any,
    /// The local-DC replicas of this key first.
    Key {
        keyspace: &'a str,
        replication: Option<Arc<topology::Keyspace>>,
        key: &'a [u8],
    },
}

impl Client {
    /// Learns the ring from the first endpoint that answers DescribeRing.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
        let pool = Pool::new(
            options.channels_per_node,
            options.connect_timeout,
            options.down_for,
            options.framed_sessions,
        );
        let mut errors = Vec::new();
        for address in &options.endpoints {
            let attempt = async {
                let node = pool.node(address)?;
                let response = node
                    .client()
                    .describe_ring(timed(pb::DescribeRingRequest {}, options.request_timeout))
                    .await
                    .map_err(|status| Failure::Status(status).classify(address).0)?;
                Ok::<_, ClientError>(response.into_inner())
            };
            match attempt.await {
                Ok(ring) => {
                    let topology = Topology::new(ring, options.local_dc.as_deref());
                    return Ok(Client {
                        inner: Arc::new(Inner {
                            options,
                            pool,
                            topology: RwLock::new(Arc::new(topology)),
                            keyspaces: RwLock::new(HashMap::new()),
                            refreshing: AtomicBool::new(false),
                            rotation: AtomicUsize::new(0),
                        }),
                    });
                }
                Err(error) => errors.push(EndpointError {
                    address: address.clone(),
                    error: Box::new(error),
                }),
            }
        }
        Err(ClientError::NoEndpointsReachable(errors))
    }

    /// The DC this client treats as local.
    pub fn local_dc(&self) -> String {
        self.topology().local_dc.clone()
    }

    /// The epoch of the ring the client routes by.
    pub fn ring_epoch(&self) -> u64 {
        self.topology().epoch
    }

    /// Reads one key; `None` when it has no value.
    pub async fn get(
        &self,
        keyspace: &str,
        key: impl Into<Bytes>,
        consistency: ConsistencyLevel,
    ) -> Result<Option<pb::ReadValue>> {
        let key = key.into();
        let request = pb::GetRequest {
            keyspace: keyspace.to_owned(),
            consistency: consistency as i32,
            key: key.clone(),
        };
        let route = self.key_route(keyspace, &key).await;
        let retries = self.inner.options.read_retries;
        let response = self.key_call(route, retries, request).await?;
        Ok(response.value)
    }

    /// Writes one key; answers the timestamp it was stored with.
    pub async fn put(
        &self,
        keyspace: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<u64> {
        let key = key.into();
        let request = pb::PutRequest {
            keyspace: keyspace.to_owned(),
            consistency: options.consistency as i32,
            key: key.clone(),
            value: value.into(),
            timestamp: options.timestamp,
            ttl_ms: options.ttl.map(ttl_ms),
        };
        let route = self.key_route(keyspace, &key).await;
        let retries = self.write_retries(options.timestamp);
        let response = self.key_call(route, retries, request).await?;
        Ok(response.timestamp)
    }

    /// Deletes one key (writes a tombstone); answers the tombstone's timestamp. `ttl` is
    /// ignored.
    pub async fn delete(
        &self,
        keyspace: &str,
        key: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<u64> {
        let key = key.into();
        let request = pb::DeleteRequest {
            keyspace: keyspace.to_owned(),
            consistency: options.consistency as i32,
            key: key.clone(),
            timestamp: options.timestamp,
        };
        let route = self.key_route(keyspace, &key).await;
        let retries = self.write_retries(options.timestamp);
        let response = self.key_call(route, retries, request).await?;
        Ok(response.timestamp)
    }

    /// Reads up to 1000 keys; one result per key in request order, each a value, `None` for
    /// no value, or that key's own error.
    pub async fn multi_get(
        &self,
        keyspace: &str,
        keys: Vec<Bytes>,
        consistency: ConsistencyLevel,
    ) -> Result<Vec<(Bytes, Result<Option<pb::ReadValue>, KvError>)>> {
        let request = pb::MultiGetRequest {
            keyspace: keyspace.to_owned(),
            consistency: consistency as i32,
            keys,
        };
        let retries = self.inner.options.read_retries;
        let response = self
            .call(Route::Any, retries, request, |mut c, r| async move {
                c.multi_get(r).await
            })
            .await?;
        response
            .results
            .into_iter()
            .map(|r| {
                let outcome = match r.outcome {
                    Some(pb::key_result::Outcome::Value(v)) => Ok(Some(v)),
                    Some(pb::key_result::Outcome::Missing(_)) => Ok(None),
                    Some(pb::key_result::Outcome::Error(e)) => Err(KvError::from(e)),
                    None => {
                        return Err(ClientError::Malformed(
                            "a key result without outcome".into(),
                        ))
                    }
                };
                Ok((r.key, outcome))
            })
            .collect()
    }

    /// Writes up to 1000 mutations with one timestamp; not atomic across keys. Retried on an
    /// unreachable node only when `options.timestamp` is given.
    pub async fn batch(
        &self,
        keyspace: &str,
        mutations: Vec<pb::Mutation>,
        options: WriteOptions,
    ) -> Result<BatchOutcome> {
        let request = pb::BatchRequest {
            keyspace: keyspace.to_owned(),
            consistency: options.consistency as i32,
            mutations,
            timestamp: options.timestamp,
            ttl_ms: options.ttl.map(ttl_ms),
        };
        let retries = self.write_retries(options.timestamp);
        let response = self
            .call(Route::Any, retries, request, |mut c, r| async move {
                c.batch(r).await
            })
            .await?;
        Ok(BatchOutcome {
            timestamp: response.timestamp,
            failures: response
                .failures
                .into_iter()
                .map(|f| {
                    let error = f.error.map_or_else(
                        || KvError::Other {
                            code: Code::Unknown,
                            message: "failure without error".into(),
                        },
                        KvError::from,
                    );
                    (f.index, error)
                })
                .collect(),
        })
    }

    /// A scan of `range` (start exclusive, end inclusive; `start == end` is the whole ring),
    /// read page by page with [`Scan::next_page`].
    pub fn scan(
        &self,
        keyspace: &str,
        range: TokenRange,
        consistency: ConsistencyLevel,
        page_size: u32,
    ) -> Scan {
        Scan {
            client: self.clone(),
            request: pb::ScanRequest {
                keyspace: keyspace.to_owned(),
                consistency: consistency as i32,
                range: Some(encode_token_range(range)),
                page_size,
                paging_state: Bytes::new(),
            },
            done: false,
        }
    }

    /// Creates a keyspace; answers the definition in force and whether this call created it.
    pub async fn create_keyspace(
        &self,
        name: &str,
        replication: BTreeMap<String, u32>,
        if_not_exists: bool,
    ) -> Result<(pb::Keyspace, bool)> {
        let request = pb::CreateKeyspaceRequest {
            keyspace: Some(pb::Keyspace {
                name: name.to_owned(),
                replication,
                schema_version: 0,
            }),
            if_not_exists,
        };
        let response = self
            .call(Route::Any, 0, request, |mut c, r| async move {
                c.create_keyspace(r).await
            })
            .await?;
        let keyspace = response
            .keyspace
            .ok_or_else(|| ClientError::Malformed("CreateKeyspace without keyspace".into()))?;
        self.forget_keyspace(name);
        Ok((keyspace, response.created))
    }

    pub async fn describe_keyspace(&self, name: &str) -> Result<pb::Keyspace> {
        let request = pb::DescribeKeyspaceRequest {
            name: name.to_owned(),
        };
        let retries = self.inner.options.read_retries;
        let response = self
            .call(Route::Any, retries, request, |mut c, r| async move {
                c.describe_keyspace(r).await
            })
            .await?;
        response
            .keyspace
            .ok_or_else(|| ClientError::Malformed("DescribeKeyspace without keyspace".into()))
    }

    pub async fn list_keyspaces(&self) -> Result<pb::ListKeyspacesResponse> {
        let retries = self.inner.options.read_retries;
        self.call(
            Route::Any,
            retries,
            pb::ListKeyspacesRequest {},
            |mut c, r| async move { c.list_keyspaces(r).await },
        )
        .await
    }

    /// Drops a keyspace; answers false when `if_exists` found none.
    pub async fn drop_keyspace(&self, name: &str, if_exists: bool) -> Result<bool> {
        let request = pb::DropKeyspaceRequest {
            name: name.to_owned(),
            if_exists,
        };
        let response = self
            .call(Route::Any, 0, request, |mut c, r| async move {
                c.drop_keyspace(r).await
            })
            .await?;
        self.forget_keyspace(name);
        Ok(response.dropped)
    }

    /// The ring as a node sees it now; the client also routes by it from now on if it is newer
    /// than what the client had.
    pub async fn describe_ring(&self) -> Result<pb::DescribeRingResponse> {
        let retries = self.inner.options.read_retries;
        let response = self
            .call(
                Route::Any,
                retries,
                pb::DescribeRingRequest {},
                |mut c, r| async move { c.describe_ring(r).await },
            )
            .await?;
        self.install(response.clone());
        Ok(response)
    }

    /// Every replica's own cell of a key, unresolved, for diagnosis.
    pub async fn inspect(
        &self,
        keyspace: &str,
        key: impl Into<Bytes>,
    ) -> Result<pb::InspectResponse> {
        let key = key.into();
        let request = pb::InspectRequest {
            keyspace: keyspace.to_owned(),
            key: key.clone(),
        };
        let route = self.key_route(keyspace, &key).await;
        let retries = self.inner.options.read_retries;
        self.call(route, retries, request, |mut c, r| async move {
            c.inspect(r).await
        })
        .await
    }

    fn topology(&self) -> Arc<Topology> {
        self.inner.topology.read().expect("not poisoned").clone()
    }

    fn write_retries(&self, timestamp: Option<u64>) -> usize {
        // Without a client timestamp a retry would write a second, newer version.
        if timestamp.is_some() {
            self.inner.options.read_retries
        } else {
            0
        }
    }

    /// The route of a key's request, with the keyspace's replication when it can be learned.
    /// Without it the request still goes out, to any local node, which answers with the real
    /// error if there is one.
    async fn key_route<'a>(&self, keyspace: &'a str, key: &'a [u8]) -> Route<'a> {
        let replication = if self.topology().token_aware {
            self.replication(keyspace).await
        } else {
            None
        };
        Route::Key {
            keyspace,
            replication,
            key,
        }
    }

    async fn replication(&self, keyspace: &str) -> Option<Arc<topology::Keyspace>> {
        let known = (self.inner.keyspaces.read().expect("not poisoned"))
            .get(keyspace)
            .cloned();
        let cell = known.unwrap_or_else(|| {
            let mut keyspaces = self.inner.keyspaces.write().expect("not poisoned");
            keyspaces.entry(keyspace.to_owned()).or_default().clone()
        });
        cell.get_or_try_init(|| async {
            let ks = self.describe_keyspace(keyspace).await?;
            Ok::<_, ClientError>(Arc::new(topology::Keyspace::new(
                ks.replication.into_iter().map(|(dc, rf)| (dc, rf as usize)),
            )))
        })
        .await
        .ok()
        .cloned()
    }

    fn forget_keyspace(&self, keyspace: &str) {
        self.inner
            .keyspaces
            .write()
            .expect("not poisoned")
            .remove(keyspace);
    }

    /// A single-key call, through the node's pipeline session unless pipelining is off.
    async fn key_call<R: KeyOp>(
        &self,
        route: Route<'_>,
        retries: usize,
        request: R,
    ) -> Result<R::Response> {
        if !self.inner.options.pipelining {
            return self.call(route, retries, request, R::unary).await;
        }
        let timeout = self.inner.options.request_timeout;
        self.attempts(route, retries, request, |node, request| {
            pipelined(node, request, timeout)
        })
        .await
    }

    /// [`Client::attempts`] with one unary call per attempt.
    async fn call<Req, Resp, F, Fut>(
        &self,
        route: Route<'_>,
        retries: usize,
        request: Req,
        method: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(KeyValueClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let timeout = self.inner.options.request_timeout;
        self.attempts(route, retries, request, |node, request| {
            let call = method(node.client(), timed(request, timeout));
            async move { Attempt::unary(call.await) }
        })
        .await
    }

    /// Makes an attempt at the best candidate for `route`; when that node is unreachable, at
    /// the next, up to `retries` more times. Errors a node answers are never retried.
    async fn attempts<Req, Resp, F, Fut>(
        &self,
        route: Route<'_>,
        retries: usize,
        request: Req,
        attempt: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Arc<NodeConns>, Req) -> Fut,
        Fut: Future<Output = Attempt<Resp>>,
    {
        let topology = self.topology();
        let rotation = self.inner.rotation.fetch_add(1, Ordering::Relaxed);
        let key = match &route {
            Route::Key {
                keyspace,
                replication: Some(replication),
                key,
            } => Some((*keyspace, &**replication, token_of(key))),
            _ => None,
        };
        let mut candidates =
            topology.candidates(key, rotation, |address| self.inner.pool.is_down(address));
        if candidates.is_empty() {
            candidates = self
                .inner
                .options
                .endpoints
                .iter()
                .map(String::as_str)
                .collect();
        }
        let timeout = self.inner.options.request_timeout;
        let mut last = None;
        for address in candidates.into_iter().take(retries + 1) {
            let node = self.inner.pool.node(address)?;
            let attempt = attempt(node.clone(), request.clone());
            let Attempt { result, epoch } = match timeout {
                Some(limit) => tokio::time::timeout(limit, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Attempt::failed(Status::deadline_exceeded(format!(
                            "no answer from {address} within the client's deadline of {limit:?}"
                        )))
                    }),
                None => attempt.await,
            };
            if let Some(epoch) = epoch {
                self.observe_epoch(epoch);
            }
            let failure = match result {
                Ok(response) => {
                    node.mark_up();
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            let (error, unreachable) = failure.classify(node.address());
            if !unreachable {
                if let (
                    ClientError::Kv(KvError::KeyspaceNotFound(_)),
                    Route::Key { keyspace, .. },
                ) = (&error, &route)
                {
                    self.forget_keyspace(keyspace);
                }
                return Err(error);
            }
            node.mark_down();
            last = Some(error);
        }
        Err(last.unwrap_or(ClientError::NoEndpointsReachable(Vec::new())))
    }

    /// Starts a background ring refresh when a node reports a newer epoch than ours; at most
    /// one runs at a time, and requests meanwhile route by the old ring.
    fn observe_epoch(&self, epoch: u64) {
        if epoch <= self.topology().epoch || self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            // A failed refresh is retried when the next response shows the epoch again.
            let _ = client.describe_ring().await;
            client.inner.refreshing.store(false, Ordering::Release);
        });
    }

    fn install(&self, response: pb::DescribeRingResponse) {
        let mut current = self.inner.topology.write().expect("not poisoned");
        if response.ring_epoch < current.epoch {
            return;
        }
        // The local DC is chosen once: a refresh answered by a node of another DC (because the
        // local ones are down) must not move the client's traffic there for good.
        let topology = Topology::new(response, Some(&current.local_dc));
        let endpoints = &self.inner.options.endpoints;
        self.inner.pool.retain(|address| {
            endpoints.iter().any(|e| e == address)
                || topology.nodes.iter().any(|n| n.address == address)
        });
        *current = Arc::new(topology);
    }
}

/// A scan in progress: the request and where the last page ended.
pub struct Scan {
    client: Client,
    request: pb::ScanRequest,
    done: bool,
}

impl Scan {
    /// The next page, or `None` once the range is done. A page may be short or even empty
    /// without being the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<pb::ScanEntry>>> {
        if self.done {
            return Ok(None);
        }
        let retries = self.client.inner.options.read_retries;
        let response = self
            .client
            .call(
                Route::Any,
                retries,
                self.request.clone(),
                |mut c, r| async move { c.scan(r).await },
            )
            .await?;
        self.done = response.paging_state.is_empty();
        self.request.paging_state = response.paging_state;
        Ok(Some(response.entries))
    }
}

fn timed<T>(message: T, timeout: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}
