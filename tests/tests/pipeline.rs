//! The SDK's pipeline sessions against real kv-node processes: many concurrent single-key
//! calls answered right, reads carrying on when a node dies under open sessions, and a node
//! with open sessions still stopping gracefully.

use std::time::{Duration, Instant};

use client::pb::v1::ConsistencyLevel;
use client::{Client, ClientError, ClientOptions, WriteOptions};
use cluster_tests::Cluster;

const KS: &str = "app";
const KEYS: usize = 600;

async fn sdk(cluster: &Cluster) -> Client {
    let endpoints = cluster.nodes().into_iter().map(|n| n.client_address);
    let client = Client::connect(ClientOptions::new(endpoints))
        .await
        .expect("connects");
    client
        .create_keyspace(KS, [("dc1".to_owned(), 3)].into(), false)
        .await
        .expect("CreateKeyspace");
    client
}

/// Runs `KEYS` calls at once, each through `call(client, i)`, and answers their results.
async fn concurrently<T, F, Fut>(client: &Client, call: F) -> Vec<Result<T, ClientError>>
where
    T: Send + 'static,
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..KEYS)
        .map(|i| tokio::spawn(call(client.clone(), i)))
        .collect();
    let mut results = Vec::with_capacity(KEYS);
    for task in tasks {
        results.push(task.await.expect("no panic"));
    }
    results
}

fn write_options(i: usize) -> WriteOptions {
    // A client timestamp makes a write idempotent, so it is retried on an unreachable node.
    WriteOptions {
        timestamp: Some((1_700_000_000_000u64 << 16) + i as u64),
        ..WriteOptions::new(ConsistencyLevel::Quorum)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_survive_a_node_dying_and_a_node_stopping() {
    let cluster = Cluster::up(1, 3).await;
    let client = sdk(&cluster).await;
    let puts = concurrently(&client, |c, i| async move {
        c.put(KS, format!("k{i}"), format!("v{i}"), write_options(i))
            .await
    })
    .await;
    for (i, put) in puts.into_iter().enumerate() {
        assert_eq!(
            put.expect("put at QUORUM"),
            write_options(i).timestamp.unwrap()
        );
    }

    // Every node has an open session now; one dies while reads keep coming. Until the others
    // see it down, a coordinator may still wait on it and fail a read (untyped UNAVAILABLE,
    // retried like an unreachable node), so only the kind of error is checked here: none
    // hangs, and none is anything but Unreachable.
    let reading = {
        let client = client.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                let reads = concurrently(&client, |c, i| async move {
                    c.get(KS, format!("k{i}"), ConsistencyLevel::Quorum).await
                })
                .await;
                for (i, read) in reads.into_iter().enumerate() {
                    match read {
                        Ok(value) => assert_eq!(value.expect("written").value, format!("v{i}")),
                        Err(ClientError::Unreachable { .. }) => {}
                        Err(e) => panic!("k{i} at QUORUM, a node dying: {e}"),
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill("dc1-n3").await;
    reading.await.expect("every read ends");
    cluster
        .wait_seen_down(&["dc1-n1", "dc1-n2"], "dc1-n3")
        .await;
    let reads = concurrently(&client, |c, i| async move {
        c.get(KS, format!("k{i}"), ConsistencyLevel::Quorum).await
    })
    .await;
    for (i, read) in reads.into_iter().enumerate() {
        let value = read.unwrap_or_else(|e| panic!("k{i} at QUORUM with one node dead: {e}"));
        assert_eq!(value.expect("written").value, format!("v{i}"));
    }

    // A node with open sessions stops gracefully and in time, and the client carries on.
    let started = Instant::now();
    cluster.stop("dc1-n2").await;
    assert!(started.elapsed() < Duration::from_secs(20));
    cluster.wait_seen_down(&["dc1-n1"], "dc1-n2").await;
    let reads = concurrently(&client, |c, i| async move {
        c.get(KS, format!("k{i}"), ConsistencyLevel::One).await
    })
    .await;
    for (i, read) in reads.into_iter().enumerate() {
        let value = read.unwrap_or_else(|e| panic!("k{i} at ONE with one node up: {e}"));
        assert_eq!(value.expect("written").value, format!("v{i}"));
    }

    // The restarted nodes get sessions again: QUORUM needs two of them.
    cluster.start("dc1-n2").await;
    cluster.start("dc1-n3").await;
    let puts = concurrently(&client, |c, i| async move {
        c.put(KS, format!("k{i}"), "again", write_options(KEYS + i))
            .await
    })
    .await;
    for (i, put) in puts.into_iter().enumerate() {
        put.unwrap_or_else(|e| panic!("k{i} at QUORUM after the restarts: {e}"));
    }
}
