//! The stores the generator drives: ours through the SDK, and (with the `bench-peers` feature)
//! Redis Cluster and etcd through their usual client crates, each doing the same YCSB
//! operations.

use bytes::Bytes;
use client::pb::v1::ConsistencyLevel;
use client::{Client, ClientError, KvError};
use topology::{token_of, Token, TokenRange};

use super::stats::{ErrorKind, OpError};

/// Which store `kvctl bench` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// This cluster, through the SDK
    Kv,
    /// A Redis Cluster (needs the bench-peers feature; `bench/peers.sh up` starts one)
    Redis,
    /// An etcd cluster (needs the bench-peers feature; `bench/peers.sh up` starts one)
    Etcd,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Kv => "kv",
            StoreKind::Redis => "redis",
            StoreKind::Etcd => "etcd",
        }
    }
}

pub enum Store {
    Kv {
        client: Client,
        keyspace: String,
        consistency: ConsistencyLevel,
    },
    #[cfg(feature = "bench-peers")]
    Redis(Box<super::peers::Redis>),
    #[cfg(feature = "bench-peers")]
    Etcd(Box<super::peers::Etcd>),
}

impl Store {
    /// Whether the key had a value.
    pub async fn read(&self, key: &str) -> Result<bool, OpError> {
        match self {
            Store::Kv {
                client,
                keyspace,
                consistency,
            } => client
                .get(
                    keyspace,
                    Bytes::copy_from_slice(key.as_bytes()),
                    *consistency,
                )
                .await
                .map(|v| v.is_some())
                .map_err(kv_error),
            #[cfg(feature = "bench-peers")]
            Store::Redis(r) => r.read(key).await,
            #[cfg(feature = "bench-peers")]
            Store::Etcd(e) => e.read(key).await,
        }
    }

    pub async fn write(&self, key: String, value: Bytes) -> Result<(), OpError> {
        match self {
            Store::Kv {
                client,
                keyspace,
                consistency,
            } => client
                .put(
                    keyspace,
                    key,
                    value,
                    client::WriteOptions::new(*consistency),
                )
                .await
                .map(drop)
                .map_err(kv_error),
            #[cfg(feature = "bench-peers")]
            Store::Redis(r) => r.write(key, value).await,
            #[cfg(feature = "bench-peers")]
            Store::Etcd(e) => e.write(key, value).await,
        }
    }

    /// Up to `length` entries from `key` on, in the store's order (ring order for ours, key
    /// order for etcd); answers how many came back.
    pub async fn scan(&self, key: &str, length: u32) -> Result<usize, OpError> {
        match self {
            Store::Kv {
                client,
                keyspace,
                consistency,
            } => {
                // Start exclusive, end inclusive: from the key's own token round the ring.
                let token = token_of(key.as_bytes()).0;
                let range =
                    TokenRange::new(Token(token.wrapping_sub(1)), Token(token.wrapping_sub(2)));
                let mut scan = client.scan(keyspace, range, *consistency, length);
                // The node fills a page across ranges, so one page is the whole short scan.
                let page = scan.next_page().await.map_err(kv_error)?;
                Ok(page.map_or(0, |p| p.len()))
            }
            #[cfg(feature = "bench-peers")]
            Store::Redis(_) => Err(OpError {
                kind: ErrorKind::Other,
                message: "Redis Cluster has no ordered scan".into(),
            }),
            #[cfg(feature = "bench-peers")]
            Store::Etcd(e) => e.scan(key, length).await,
        }
    }
}

fn kv_error(error: ClientError) -> OpError {
    let kind = match &error {
        ClientError::Kv(KvError::Unavailable(_)) => ErrorKind::Unavailable,
        ClientError::Kv(KvError::Timeout(_)) => ErrorKind::Timeout,
        ClientError::Kv(KvError::Other { code, .. }) if *code == tonic::Code::DeadlineExceeded => {
            ErrorKind::Timeout
        }
        _ => ErrorKind::Other,
    };
    OpError {
        kind,
        message: crate::errors::client_error(&error),
    }
}
