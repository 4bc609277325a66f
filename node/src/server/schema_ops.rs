//! Schema changes: kept in `<data_dir>/schema` (a [`super::statefile`] with magic `KVSC`),
//! applied to storage before the node serves them, and pushed to every live peer at once so a
//! keyspace can be used on any node as soon as its creation returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::pb::v1 as pb;
use client::KvError;

use super::convert::keyspace_to_pb;
use super::statefile::{self, StateFileError};
use super::Node;
use crate::cluster::{Schema, SchemaError};

const MAGIC: [u8; 4] = *b"KVSC";
const FILE: &str = "schema";
/// How long a schema change waits for every live node to hold it before answering anyway.
const AGREEMENT_WAIT: Duration = Duration::from_secs(5);

pub fn load(data_dir: &Path) -> Result<Option<Schema>, StateFileError> {
    statefile::read(&data_dir.join(FILE), MAGIC)
}

fn schema_error(e: SchemaError) -> KvError {
    match e {
        SchemaError::Invalid { field, reason } => {
            KvError::invalid_argument(format!("keyspace.{field}"), reason)
        }
        SchemaError::NotFound(keyspace) => {
            KvError::KeyspaceNotFound(pb::KeyspaceNotFound { keyspace })
        }
        SchemaError::Exists(name) => {
            KvError::invalid_argument("keyspace.name", format!("{name:?} exists"))
        }
    }
}

fn internal(e: impl std::fmt::Display) -> KvError {
    KvError::Other {
        code: tonic::Code::Internal,
        message: e.to_string(),
    }
}

impl Node {
    /// Makes `schema` (merged with ours) this node's: stored, storage opened or removed, then
    /// published in the view and in gossip.
    pub async fn adopt_schema(self: &Arc<Self>, schema: Schema) -> Result<(), KvError> {
        let _guard = self.schema_lock.lock().await;
        self.adopt_locked(schema).await
    }

    async fn adopt_locked(self: &Arc<Self>, schema: Schema) -> Result<(), KvError> {
        let mut merged = self.members.schema();
        if !merged.merge(&schema) {
            return Ok(());
        }
        let node = self.clone();
        let to_store = merged.clone();
        tokio::task::spawn_blocking(move || -> Result<(), KvError> {
            statefile::write(&node.config.data_dir.join(FILE), MAGIC, &to_store)
                .map_err(internal)?;
            node.storage.sync_schema(&to_store).map_err(internal)
        })
        .await
        .map_err(internal)??;
        self.members.adopt_schema(&merged);
        tracing::info!(version = merged.version(), "schema adopted");
        Ok(())
    }

    /// Creates a keyspace; with `if_not_exists`, an existing one is returned unchanged.
    pub async fn create_keyspace(
        self: &Arc<Self>,
        name: &str,
        replication: BTreeMap<String, u32>,
        if_not_exists: bool,
    ) -> Result<(pb::Keyspace, bool), KvError> {
        let guard = self.schema_lock.lock().await;
        let mut schema = self.members.schema();
        if let Some(existing) = schema.get(name) {
            let existing = keyspace_to_pb(name, existing);
            if if_not_exists {
                return Ok((existing, false));
            }
            return Err(KvError::KeyspaceExists(pb::KeyspaceExists {
                existing: Some(existing),
            }));
        }
        let version = self.hlc.now().max(schema.version() + 1);
        let def = schema
            .create(name, replication, version)
            .map_err(schema_error)?
            .clone();
        self.adopt_locked(schema).await?;
        drop(guard);
        self.spread_schema().await;
        Ok((keyspace_to_pb(name, &def), true))
    }

    pub async fn drop_keyspace(
        self: &Arc<Self>,
        name: &str,
        if_exists: bool,
    ) -> Result<bool, KvError> {
        let guard = self.schema_lock.lock().await;
        let mut schema = self.members.schema();
        if schema.get(name).is_none() && if_exists {
            return Ok(false);
        }
        let version = self.hlc.now().max(schema.version() + 1);
        schema.drop_keyspace(name, version).map_err(schema_error)?;
        self.adopt_locked(schema).await?;
        drop(guard);
        self.spread_schema().await;
        Ok(true)
    }

    /// Gossips with every live peer now, then waits (bounded) until they all hold our schema.
    async fn spread_schema(self: &Arc<Self>) {
        let deadline = Instant::now() + AGREEMENT_WAIT;
        loop {
            let behind = self.members.schema_disagreement();
            if behind.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let behind: Vec<&str> = behind.iter().map(|n| n.as_str()).collect();
                tracing::warn!(?behind, "schema change not yet acknowledged by every live node; gossip will finish spreading it");
                return;
            }
            let rounds = (self.members.peers().into_iter())
                .filter(|(id, _, alive)| *alive && behind.contains(id))
                .map(|(_, addr, _)| self.gossip_with(addr));
            futures_util::future::join_all(rounds).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
