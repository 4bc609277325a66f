//! Requests the cluster tests make, on [`KS`] with text keys and values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::{
    self as pb, replica_cell, ConsistencyLevel, CreateKeyspaceRequest, GetRequest, InspectRequest,
    Keyspace, PutRequest,
};
use client::KvError;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A client of one node's KeyValue service.
pub type Client = KeyValueClient<Channel>;

/// The keyspace the tests use.
pub const KS: &str = "app";

/// Creates [`KS`] with `replication`.
pub async fn create_keyspace(c: &mut Client, replication: &[(&str, u32)]) {
    let replication: BTreeMap<String, u32> = replication
        .iter()
        .map(|(d, n)| (d.to_string(), *n))
        .collect();
    c.create_keyspace(CreateKeyspaceRequest {
        keyspace: Some(Keyspace {
            name: KS.into(),
            replication,
            schema_version: 0,
        }),
        if_not_exists: false,
    })
    .await
    .expect("CreateKeyspace");
}

/// Writes `key` = `value` at `level`; the timestamp stored, or the typed error.
pub async fn put(
    c: &mut Client,
    key: &str,
    value: &str,
    level: ConsistencyLevel,
) -> Result<u64, KvError> {
    let r = c
        .put(PutRequest {
            keyspace: KS.into(),
            consistency: level as i32,
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            timestamp: None,
            ttl_ms: None,
        })
        .await;
    r.map(|r| r.into_inner().timestamp)
        .map_err(|s| KvError::from_status(&s))
}

/// Reads `key` at `level`.
pub async fn get(
    c: &mut Client,
    key: &str,
    level: ConsistencyLevel,
) -> Result<Option<String>, KvError> {
    let r = c
        .get(GetRequest {
            keyspace: KS.into(),
            consistency: level as i32,
            key: key.as_bytes().to_vec().into(),
        })
        .await
        .map_err(|s| KvError::from_status(&s))?;
    Ok(r.into_inner()
        .value
        .map(|v| String::from_utf8_lossy(&v.value).into_owned()))
}

/// Each replica's own value of `key` by node id; None when it holds nothing or did not answer.
pub async fn replica_values(c: &mut Client, key: &str) -> BTreeMap<String, Option<String>> {
    let r = c
        .inspect(InspectRequest {
            keyspace: KS.into(),
            key: key.as_bytes().to_vec().into(),
        })
        .await
        .expect("Inspect")
        .into_inner();
    let mut out = BTreeMap::new();
    for dc in r.dcs {
        for replica in dc.replicas {
            let value = match replica.outcome {
                Some(replica_cell::Outcome::Cell(cell)) => match cell.content {
                    Some(pb::cell::Content::Value(v)) => {
                        Some(String::from_utf8_lossy(&v).into_owned())
                    }
                    _ => Some("<tombstone>".into()),
                },
                _ => None,
            };
            out.insert(replica.node_id, value);
        }
    }
    out
}

/// Clients writing distinct keys at QUORUM in the background, remembering which writes were
/// acknowledged: what a change under load must not lose.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    /// One writer per client; writer `w` writes keys `w{w}-{i}` with the key as value.
    pub fn start(clients: Vec<Client>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (clients.into_iter().enumerate())
            .map(|(w, mut c)| {
                let (stop, acked) = (stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{w}-{i}");
                        if put(&mut c, &key, &key, ConsistencyLevel::Quorum)
                            .await
                            .is_ok()
                        {
                            acked.lock().expect("not poisoned").push(key);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().expect("not poisoned").len()
    }

    /// Stops the writers and returns every acknowledged key.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer task");
        }
        let acked = self.acked.lock().expect("not poisoned");
        acked.clone()
    }
}
