//! The networked node: storage per keyspace, membership by gossip, the coordinator, hinted
//! handoff, and the gRPC and HTTP services that expose them. [`Node::start`] brings a node up
//! from its configuration; [`RunningNode::shutdown`] takes it down gracefully.

mod accept;
mod background;
mod client_service;
mod convert;
mod coordinator;
mod http;
mod identity;
mod internode_service;
mod latency;
mod local_writes;
mod membership;
mod metrics;
mod peers;
mod pipe;
mod racing;
mod repair;
mod replica;
mod route;
mod scan;
mod schema_ops;
mod seeds;
mod statefile;
mod storage;
mod streaming;
mod topology_ops;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use topology::{NodeId, NodeState};

use crate::cluster::gossip::{Addresses, Location};
use crate::cluster::{GossipState, HintStore, HintStoreOptions, Hlc};
use crate::config::NodeConfig;
use crate::lsm::{Clock, SystemClock};

pub use metrics::Metrics;
pub use seeds::{Answer, HickoryResolver, LookupError, SeedResolver, SrvTarget};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] statefile::StateFileError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("hint store: {0}")]
    Hints(#[from] crate::cluster::HintError),
    #[error("starting a background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Everything a request handler needs; shared by the services and background tasks.
pub struct Node {
    pub config: NodeConfig,
    pub me: NodeId,
    pub clock: Arc<dyn Clock>,
    pub hlc: Arc<Hlc>,
    storage: storage::Storage,
    hints: HintStore,
    members: membership::Membership,
    peers: peers::Peers,
    seeds: seeds::SeedAddresses,
    latencies: latency::Latencies,
    local_writes: local_writes::LocalWrites,
    pub metrics: Metrics,
    rng: Mutex<StdRng>,
    repairs: repair::Repairs,
    /// Serialises this node's own schema changes, so two creates do not race on one version.
    schema_lock: tokio::sync::Mutex<()>,
    /// Held while this node drives a topology change of its own.
    change_lock: tokio::sync::Mutex<()>,
    streams: streaming::Streams,
    /// Set when the node itself decides to stop (it left the cluster, or cannot bootstrap).
    stop_requested: watch::Sender<bool>,
}

/// A started node and the tasks that serve it.
pub struct RunningNode {
    pub node: Arc<Node>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    loops: Vec<JoinHandle<()>>,
}

struct Listeners {
    client: TcpListener,
    internode: TcpListener,
    http: TcpListener,
}

async fn bind(config: &NodeConfig) -> Result<Listeners, StartError> {
    async fn one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    }
    Ok(Listeners {
        client: one("client", config.listen.client).await?,
        internode: one("internode", config.listen.internode).await?,
        http: one("http", config.listen.http).await?,
    })
}

impl Node {
    /// Opens the node's storage, binds its ports and starts serving and gossiping; seed names
    /// are looked up through the system's DNS configuration.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        Node::start_with(config, Arc::new(HickoryResolver::from_system())).await
    }

    /// [`Node::start`] with seed names looked up through `resolver`.
    pub async fn start_with(
        config: NodeConfig,
        resolver: Arc<dyn SeedResolver>,
    ) -> Result<RunningNode, StartError> {
        let listeners = bind(&config).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (node, bootstrap) = {
            let (config, clock) = (config.clone(), clock.clone());
            tokio::task::spawn_blocking(move || Node::open(config, clock, resolver)).await??
        };
        let node = Arc::new(node);
        let (stop, stop_rx) = watch::channel(false);
        let servers = vec![
            tokio::spawn(client_service::serve(
                node.clone(),
                listeners.client,
                stop_rx.clone(),
            )),
            tokio::spawn(internode_service::serve(
                node.clone(),
                listeners.internode,
                stop_rx.clone(),
            )),
            tokio::spawn(http::serve(node.clone(), listeners.http, stop_rx.clone())),
        ];
        let mut loops = vec![
            tokio::spawn(node.clone().gossip_loop(stop_rx.clone())),
            tokio::spawn(node.clone().hint_loop(stop_rx.clone())),
            tokio::spawn(node.clone().repair_loop(stop_rx.clone())),
        ];
        if let Some(identity) = bootstrap {
            let (node, mut stop) = (node.clone(), stop_rx.clone());
            loops.push(tokio::spawn(async move {
                tokio::select! {
                    _ = node.bootstrap(identity) => {}
                    _ = stop.changed() => {}
                }
            }));
        }
        tracing::info!(
            node = %node.me, dc = %node.config.dc, rack = %node.config.rack,
            client = %node.config.listen.client, internode = %node.config.listen.internode,
            "serving"
        );
        Ok(RunningNode {
            node,
            stop,
            servers,
            loops,
        })
    }

    /// The blocking part of start: files, engines, gossip state.
    fn open(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        resolver: Arc<dyn SeedResolver>,
    ) -> Result<(Node, Option<identity::Identity>), StartError> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data.join("keyspaces")).map_err(|source| StartError::DataDir {
            path: data.clone(),
            source,
        })?;
        let mut rng = StdRng::from_entropy();
        let identity = identity::load_or_create(&config, clock.now_ms(), &mut rng)?;
        let schema = schema_ops::load(data)?.unwrap_or_default();
        let engine_options = crate::lsm::Options {
            memtable_jitter_seed: rng.gen(),
            ..config.engine_options()
        };
        let storage = storage::Storage::new(&data.join("keyspaces"), engine_options);
        storage.sync_schema(&schema)?;
        let hints = HintStore::open(
            data.join("hints"),
            HintStoreOptions {
                hint_window_ms: config.hints.window_ms,
                hint_bytes_max_per_target: config.hints.bytes_max_per_target.0,
                clock: clock.clone(),
                ..HintStoreOptions::default()
            },
        )?;
        let hlc = Arc::new(Hlc::with_max_drift(
            clock.clone(),
            config.coordinator.hlc_max_drift_ms,
        ));
        let me = NodeId(config.node_id.clone());
        let location = Location {
            dc: config.dc.clone(),
            rack: config.rack.clone(),
            addresses: Addresses {
                client: config.listen.client.to_string(),
                internode: config.listen.internode.to_string(),
                http: config.listen.http.to_string(),
            },
        };
        let bootstrap = Node::needs_bootstrap(&config, &identity);
        let status = match bootstrap {
            true => NodeState::Joining,
            false => NodeState::Normal,
        };
        let mut gossip = GossipState::new(me.clone(), identity.generation, location, status);
        if !bootstrap {
            gossip.set_tokens(identity.tokens.clone());
        }
        gossip.set_schema(schema);
        let members =
            membership::Membership::new(gossip, config.phi_config(), clock.clone(), hlc.clone());
        let repairs = repair::Repairs::new(
            repair::History::open(data)?,
            config.repair.throughput_mib_per_sec,
            clock.now_ms(),
        );
        let node = Node {
            peers: peers::Peers::new(
                &config.cluster_name,
                &config.node_id,
                &config.dc,
                config.wan_latency_ms.clone(),
                config.listen.internode.ip(),
            ),
            seeds: seeds::SeedAddresses::new(&config.seeds, config.listen.internode, resolver),
            me,
            clock,
            hlc,
            storage,
            hints,
            members,
            latencies: latency::Latencies::default(),
            local_writes: local_writes::LocalWrites::default(),
            metrics: Metrics::default(),
            rng: Mutex::new(rng),
            repairs,
            schema_lock: tokio::sync::Mutex::new(()),
            change_lock: tokio::sync::Mutex::new(()),
            streams: streaming::Streams::default(),
            stop_requested: watch::channel(false).0,
            config,
        };
        Ok((node, bootstrap.then_some(identity)))
    }

    /// Asks the process to stop, as SIGTERM would.
    fn request_stop(&self) {
        self.stop_requested.send_replace(true);
    }

    /// Resolves when the node asked to stop itself.
    pub async fn stop_requested(&self) {
        let mut rx = self.stop_requested.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Serves gRPC `routes` on the connections `incoming` yields until `stop` turns, then lets
/// in-flight calls finish.
async fn serve_grpc<S, E>(
    what: &'static str,
    routes: tonic::service::Routes,
    incoming: S,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio_stream::Stream<Item = Result<tokio::net::TcpStream, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(server = what, error = %e, "gRPC server failed");
    }
}

impl RunningNode {
    /// Stops accepting requests, lets those in flight finish, stops gossip and hint replay,
    /// flushes every memtable and closes the engines.
    pub async fn shutdown(self) -> Result<(), StartError> {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        for handle in self.servers {
            handle.await?;
        }
        for handle in self.loops {
            handle.await?;
        }
        let node = self.node;
        tokio::task::spawn_blocking(move || -> Result<(), StartError> {
            node.storage.close()?;
            Ok(())
        })
        .await??;
        tracing::info!("stopped");
        Ok(())
    }
}
