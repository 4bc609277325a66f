//! The peers `kvctl bench --target redis|etcd` drives, through their usual client crates.

use anyhow::Context;
use bytes::Bytes;
use redis::AsyncCommands;

use super::stats::{ErrorKind, OpError};

/// What `bench/peers.sh up` starts.
pub const REDIS_ENDPOINTS: &[&str] = &["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
pub const ETCD_ENDPOINTS: &[&str] = &["127.0.0.1:23791", "127.0.0.1:23792", "127.0.0.1:23793"];

/// One multiplexed connection per master, shared by every task, as our SDK client is.
pub struct Redis {
    connection: redis::cluster_async::ClusterConnection,
}

impl Redis {
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Redis> {
        let nodes: Vec<String> = endpoints.iter().map(|e| format!("redis://{e}")).collect();
        let connection = redis::cluster::ClusterClient::new(nodes)
            .context("bad Redis Cluster endpoints")?
            .get_async_connection()
            .await
            .context("cannot connect to the Redis Cluster")?;
        Ok(Redis { connection })
    }

    pub async fn read(&self, key: &str) -> Result<bool, OpError> {
        let mut c = self.connection.clone();
        let value: Option<Vec<u8>> = c.get(key).await.map_err(redis_error)?;
        Ok(value.is_some())
    }

    pub async fn write(&self, key: String, value: Bytes) -> Result<(), OpError> {
        let mut c = self.connection.clone();
        c.set::<_, _, ()>(key, value.as_ref())
            .await
            .map_err(redis_error)
    }
}

fn redis_error(e: redis::RedisError) -> OpError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Other
    };
    OpError {
        kind,
        message: e.to_string(),
    }
}

/// etcd's KV service over one gRPC channel balanced across the members. Reads are etcd's
/// default, linearizable (a quorum read through the leader), like our QUORUM.
pub struct Etcd {
    kv: etcd_client::KvClient,
}

impl Etcd {
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Etcd> {
        let client = etcd_client::Client::connect(endpoints, None)
            .await
            .context("cannot connect to etcd")?;
        Ok(Etcd {
            kv: client.kv_client(),
        })
    }

    pub async fn read(&self, key: &str) -> Result<bool, OpError> {
        let response = self.kv.clone().get(key, None).await.map_err(etcd_error)?;
        Ok(!response.kvs().is_empty())
    }

    pub async fn write(&self, key: String, value: Bytes) -> Result<(), OpError> {
        self.kv
            .clone()
            .put(key, value.to_vec(), None)
            .await
            .map(drop)
            .map_err(etcd_error)
    }

    /// Key order from `key` on, at most `length` entries.
    pub async fn scan(&self, key: &str, length: u32) -> Result<usize, OpError> {
        let options = etcd_client::GetOptions::new()
            .with_from_key()
            .with_limit(i64::from(length));
        let response = self
            .kv
            .clone()
            .get(key, Some(options))
            .await
            .map_err(etcd_error)?;
        Ok(response.kvs().len())
    }
}

fn etcd_error(e: etcd_client::Error) -> OpError {
    let kind = match &e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::DeadlineExceeded => ErrorKind::Timeout,
            tonic::Code::Unavailable => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    };
    OpError {
        kind,
        message: e.to_string(),
    }
}
