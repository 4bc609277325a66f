//! The SDK against in-process fake clusters (`client::testing`): routing, retries, typed
//! errors, pipeline sessions and message limits, over real loopback sockets.

use std::time::Duration;

use client::pb::v1::{self as pb, ConsistencyLevel};
use client::testing::FakeCluster;
use client::{Client, ClientError, ClientOptions, KvError, WriteOptions, MAX_VALUE_BYTES};
use prost::bytes::Bytes;
use topology::{Token, TokenRange};

const KS: &str = "app";

async fn connect(cluster: &FakeCluster, via: &str) -> Client {
    Client::connect(ClientOptions::new([cluster.address(via)]))
        .await
        .expect("connects")
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i}"))
}

fn nodes_for(cluster: &FakeCluster, method: &str, key: &Bytes) -> Vec<String> {
    cluster
        .received()
        .into_iter()
        .filter(|r| r.method == method && r.key.as_ref() == Some(key))
        .map(|r| r.node)
        .collect()
}

#[tokio::test]
async fn key_requests_go_to_a_local_replica_of_the_key() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 4), ("dc2", 4)]).await;
    cluster.create_keyspace(KS, &[("dc1", 2), ("dc2", 2)]);
    let client = connect(&cluster, "dc1-n1").await;
    assert_eq!(client.local_dc(), "dc1");
    for i in 0..40 {
        let k = key(i);
        client
            .put(KS, k.clone(), "v", WriteOptions::default())
            .await
            .unwrap();
        client
            .get(KS, k.clone(), ConsistencyLevel::LocalQuorum)
            .await
            .unwrap()
            .expect("written");
        let replicas = cluster.replicas(KS, &k, "dc1");
        for method in ["Put", "Get"] {
            let got = nodes_for(&cluster, method, &k);
            assert_eq!(got.len(), 1, "{method} {i}: {got:?}");
            assert!(
                replicas.contains(&got[0]),
                "{method} {i}: {got:?} not in {replicas:?}"
            );
        }
    }

    // The local DC can be chosen instead of learned.
    let mut options = ClientOptions::new([cluster.address("dc1-n1")]);
    options.local_dc = Some("dc2".into());
    let remote = Client::connect(options).await.unwrap();
    let k = key(1000);
    remote
        .get(KS, k.clone(), ConsistencyLevel::One)
        .await
        .unwrap();
    let got = nodes_for(&cluster, "Get", &k);
    assert!(cluster.replicas(KS, &k, "dc2").contains(&got[0]), "{got:?}");
}

#[tokio::test]
async fn reads_and_timestamped_writes_survive_a_dead_replica_but_plain_writes_do_not_retry() {
    let mut cluster = FakeCluster::start_dcs(&[("dc1", 3)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let k = key(7);
    let replica = cluster.replicas(KS, &k, "dc1").remove(0);
    let via = if replica == "dc1-n1" {
        "dc1-n2"
    } else {
        "dc1-n1"
    };
    let client = connect(&cluster, via).await;
    client
        .put(KS, k.clone(), "before", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(nodes_for(&cluster, "Put", &k), [replica.as_str()]);

    cluster.stop(&replica).await;
    cluster.clear_received();

    let error = client
        .put(KS, k.clone(), "lost", WriteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::Unreachable { address, .. } if *address == cluster.address(&replica)),
        "{error}"
    );
    assert!(
        nodes_for(&cluster, "Put", &k).is_empty(),
        "a plain write was retried"
    );

    let value = client
        .get(KS, k.clone(), ConsistencyLevel::One)
        .await
        .unwrap()
        .expect("another node coordinates the read");
    assert_eq!(value.value, "before");
    let readers = nodes_for(&cluster, "Get", &k);
    assert_eq!(readers.len(), 1);
    assert_ne!(readers[0], replica);

    let options = WriteOptions {
        timestamp: Some(u64::MAX >> 1),
        ..WriteOptions::default()
    };
    // A fresh client has not yet seen the replica fail, so its first attempt goes there.
    let fresh = connect(&cluster, via).await;
    let ts = fresh.put(KS, k.clone(), "after", options).await.unwrap();
    assert_eq!(ts, u64::MAX >> 1);
    assert_eq!(nodes_for(&cluster, "Put", &k).len(), 1);
}

#[tokio::test]
async fn typed_unavailable_comes_back_typed_and_is_not_retried() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 3), ("dc2", 3)]).await;
    cluster.create_keyspace(KS, &[("dc1", 3), ("dc2", 3)]);
    let client = connect(&cluster, "dc1-n2").await;
    cluster.fail_with(Some(KvError::Unavailable(pb::Unavailable {
        consistency: ConsistencyLevel::All as i32,
        required: 6,
        alive: 4,
        per_dc: vec![
            pb::DcAlive {
                dc: "dc1".into(),
                required: 3,
                alive: 2,
            },
            pb::DcAlive {
                dc: "dc2".into(),
                required: 3,
                alive: 2,
            },
        ],
    })));
    let k = key(1);
    let error = client
        .get(KS, k.clone(), ConsistencyLevel::All)
        .await
        .unwrap_err();
    let Some(KvError::Unavailable(u)) = error.kv() else {
        panic!("expected a typed UNAVAILABLE, got {error:?}");
    };
    assert_eq!((u.required, u.alive, u.per_dc.len()), (6, 4, 2));
    assert_eq!(nodes_for(&cluster, "Get", &k).len(), 1);

    cluster.fail_with(None);
    let error = client
        .get("nope", k.clone(), ConsistencyLevel::One)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kv(), Some(KvError::KeyspaceNotFound(_))),
        "{error}"
    );
    let error = client
        .get(KS, Bytes::new(), ConsistencyLevel::One)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kv(), Some(KvError::InvalidArgument(a)) if a.field == "key"),
        "{error}"
    );
}

#[tokio::test]
async fn a_thousand_concurrent_gets_on_one_client_complete() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 3)]).await;
    cluster.create_keyspace(KS, &[("dc1", 3)]);
    let client = connect(&cluster, "dc1-n1").await;
    client
        .put(KS, "shared", "v", WriteOptions::default())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let k = if i % 2 == 0 {
                    Bytes::from("shared")
                } else {
                    key(i)
                };
                client.get(KS, k, ConsistencyLevel::LocalQuorum).await
            })
        })
        .collect();
    let mut found = 0;
    for task in tasks {
        found += usize::from(task.await.unwrap().unwrap().is_some());
    }
    assert_eq!(found, 500);
}

#[tokio::test]
async fn a_maximal_value_round_trips() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 2)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let client = connect(&cluster, "dc1-n1").await;
    let big = Bytes::from(vec![0xA5u8; MAX_VALUE_BYTES]);
    client
        .put(KS, "big", big.clone(), WriteOptions::default())
        .await
        .unwrap();
    let got = client
        .get(KS, "big", ConsistencyLevel::One)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value.len(), MAX_VALUE_BYTES);
    assert!(got.value == big);
}

#[tokio::test]
async fn a_larger_epoch_in_a_response_refreshes_the_ring() {
    for pipelining in [true, false] {
        a_larger_epoch_refreshes_the_ring(pipelining).await;
    }
}

async fn a_larger_epoch_refreshes_the_ring(pipelining: bool) {
    let cluster = FakeCluster::start_dcs(&[("dc1", 2)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let mut options = ClientOptions::new([cluster.address("dc1-n1")]);
    options.pipelining = pipelining;
    let client = Client::connect(options).await.unwrap();
    assert_eq!(client.ring_epoch(), 1);
    cluster.set_ring_epoch(9);
    client.get(KS, "k", ConsistencyLevel::One).await.unwrap();
    assert_eq!(sessions_opened(&cluster), usize::from(pipelining));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.ring_epoch() != 9 {
        assert!(tokio::time::Instant::now() < deadline, "ring not refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn multi_get_batch_scan_and_schema() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 3)]).await;
    let client = connect(&cluster, "dc1-n1").await;
    let (ks, created) = client
        .create_keyspace(KS, [("dc1".to_owned(), 2)].into(), false)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(ks.replication["dc1"], 2);
    let (_, created) = client
        .create_keyspace(KS, [("dc1".to_owned(), 3)].into(), true)
        .await
        .unwrap();
    assert!(!created);
    let error = client
        .create_keyspace("other", [("mars".to_owned(), 1)].into(), false)
        .await
        .unwrap_err();
    assert!(matches!(error.kv(), Some(KvError::InvalidArgument(a)) if a.field.contains("mars")));
    assert_eq!(client.list_keyspaces().await.unwrap().keyspaces.len(), 1);

    let mutations = (0..50)
        .map(|i| pb::Mutation::put(key(i), format!("v{i}")))
        .chain([pb::Mutation::delete(key(3))])
        .collect();
    let outcome = client
        .batch(KS, mutations, WriteOptions::default())
        .await
        .unwrap();
    assert!(outcome.failures.is_empty());

    let results = client
        .multi_get(
            KS,
            vec![key(1), key(3), Bytes::new()],
            ConsistencyLevel::One,
        )
        .await
        .unwrap();
    assert_eq!(results[0].1.as_ref().unwrap().as_ref().unwrap().value, "v1");
    assert_eq!(results[1].1, Ok(None));
    assert!(matches!(&results[2].1, Err(KvError::InvalidArgument(_))));

    let whole = TokenRange::new(Token(5), Token(5));
    let mut scan = client.scan(KS, whole, ConsistencyLevel::One, 7);
    let mut keys = Vec::new();
    let mut pages = 0;
    while let Some(page) = scan.next_page().await.unwrap() {
        pages += 1;
        keys.extend(page.into_iter().map(|e| e.key));
    }
    assert_eq!(keys.len(), 49);
    assert_eq!(pages, 7);

    assert!(client.drop_keyspace(KS, false).await.unwrap());
    assert!(!client.drop_keyspace(KS, true).await.unwrap());
    let ring = client.describe_ring().await.unwrap();
    assert_eq!(ring.nodes.len(), 3);
}

#[tokio::test]
async fn connect_lists_every_endpoint_that_failed() {
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let options = ClientOptions::new([dead.clone(), "not an address".to_owned()]);
    let error = Client::connect(options)
        .await
        .err()
        .expect("nothing answers");
    let ClientError::NoEndpointsReachable(errors) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(errors.len(), 2);
    assert!(error.to_string().contains(&dead), "{error}");
    assert!(
        matches!(*errors[1].error, ClientError::InvalidEndpoint { .. }),
        "{error}"
    );
}

fn sessions_opened(cluster: &FakeCluster) -> usize {
    cluster
        .received()
        .iter()
        .filter(|r| r.method == "Pipeline")
        .count()
}

#[tokio::test]
async fn concurrent_ops_share_one_pipeline_session_per_node() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 3)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let client = connect(&cluster, "dc1-n1").await;
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let options = WriteOptions::default();
                client.put(KS, key(i), format!("v{i}"), options).await?;
                if i % 3 == 0 {
                    client.delete(KS, key(i), options).await?;
                }
                client.get(KS, key(i), ConsistencyLevel::One).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let value = task.await.unwrap().unwrap();
        match i % 3 {
            0 => assert_eq!(value, None, "{i}"),
            _ => assert_eq!(value.unwrap().value, format!("v{i}"), "{i}"),
        }
    }
    assert_eq!(sessions_opened(&cluster), 3);
    assert!(cluster
        .received()
        .iter()
        .all(|r| r.method != "Pipeline" || r.key.is_none()));
}

#[tokio::test]
async fn an_op_error_does_not_end_the_session() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 1)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let client = connect(&cluster, "dc1-n1").await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            let k = if i % 2 == 0 { Bytes::new() } else { key(i) };
            tokio::spawn(async move { client.put(KS, k, "v", WriteOptions::default()).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Err(e) if i % 2 == 0 => assert!(
                matches!(e.kv(), Some(KvError::InvalidArgument(a)) if a.field == "key"),
                "{e}"
            ),
            Ok(_) if i % 2 == 1 => {}
            other => panic!("{i}: {other:?}"),
        }
    }
    let error = client
        .get("nope", key(1), ConsistencyLevel::One)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kv(), Some(KvError::KeyspaceNotFound(_))),
        "{error}"
    );
    let value = client.get(KS, key(1), ConsistencyLevel::One).await.unwrap();
    assert_eq!(value.unwrap().value, "v");
    assert_eq!(sessions_opened(&cluster), 1);
}

/// Waits until the fake nodes have received `n` pipeline sessions.
async fn until_sessions(cluster: &FakeCluster, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sessions_opened(cluster) < n {
        assert!(tokio::time::Instant::now() < deadline, "no session opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_broken_session_fails_its_pending_ops_and_the_next_call_reopens_one() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 2)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let k = key(3);
    let replica = cluster.replicas(KS, &k, "dc1").remove(0);
    let mut options = ClientOptions::new([cluster.address("dc1-n1")]);
    options.down_for = Duration::ZERO;
    let client = Client::connect(options).await.unwrap();

    cluster.stall_pipelines(true);
    let put = {
        let (client, k) = (client.clone(), k.clone());
        tokio::spawn(async move { client.put(KS, k, "v", WriteOptions::default()).await })
    };
    let get = {
        let (client, k) = (client.clone(), k.clone());
        tokio::spawn(async move { client.get(KS, k, ConsistencyLevel::One).await })
    };
    until_sessions(&cluster, 1).await;
    // Both ops reach the stalled session before it breaks.
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.break_pipelines(&replica);
    let error = put.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, ClientError::Unreachable { address, .. } if *address == cluster.address(&replica)),
        "{error}"
    );
    // The read goes on to the other node, whose session answers once released.
    cluster.stall_pipelines(false);
    assert_eq!(get.await.unwrap().unwrap(), None);
    assert!(nodes_for(&cluster, "Put", &k).is_empty());

    client
        .put(KS, k.clone(), "again", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(nodes_for(&cluster, "Put", &k), [replica.as_str()]);
    let to_replica = cluster
        .received()
        .into_iter()
        .filter(|r| r.method == "Pipeline" && r.node == replica)
        .count();
    assert_eq!(to_replica, 2, "the next call opens a new session");
}

#[tokio::test]
async fn a_timed_out_op_leaves_the_session_open() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 1)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let mut options = ClientOptions::new([cluster.address("dc1-n1")]);
    options.request_timeout = Some(Duration::from_millis(100));
    let client = Client::connect(options).await.unwrap();
    cluster.stall_pipelines(true);
    let error = client
        .get(KS, key(1), ConsistencyLevel::One)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kv(), Some(KvError::Other { code, .. }) if *code == tonic::Code::DeadlineExceeded),
        "{error}"
    );
    // The late answer is dropped; the session goes on.
    cluster.stall_pipelines(false);
    client
        .put(KS, key(1), "v", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(sessions_opened(&cluster), 1);
}

#[tokio::test]
async fn unary_calls_without_pipelining_or_pipeline() {
    let cluster = FakeCluster::start_dcs(&[("dc1", 2)]).await;
    cluster.create_keyspace(KS, &[("dc1", 2)]);
    let mut options = ClientOptions::new([cluster.address("dc1-n1")]);
    options.pipelining = false;
    let unary = Client::connect(options).await.unwrap();
    unary
        .put(KS, key(1), "v", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(sessions_opened(&cluster), 0);

    // A node of a version without Pipeline answers UNIMPLEMENTED once; the op goes unary.
    cluster.refuse_pipeline(true);
    let client = connect(&cluster, "dc1-n1").await;
    for _ in 0..4 {
        let value = client.get(KS, key(1), ConsistencyLevel::One).await.unwrap();
        assert_eq!(value.unwrap().value, "v");
    }
    assert!(sessions_opened(&cluster) <= 2);
    assert_eq!(nodes_for(&cluster, "Get", &key(1)).len(), 4);
}

#[tokio::test]
async fn a_node_without_framed_sessions_gets_a_grpc_session_and_each_op_once() {
    // The fake nodes serve gRPC only: a framed session's preface is answered with HTTP/2.
    let cluster = FakeCluster::start_dcs(&[("dc1", 1)]).await;
    cluster.create_keyspace(KS, &[("dc1", 1)]);
    let client = connect(&cluster, "dc1-n1").await;
    for i in 0..3 {
        client
            .put(KS, key(i), "v", WriteOptions::default())
            .await
            .unwrap();
        let value = client.get(KS, key(i), ConsistencyLevel::One).await.unwrap();
        assert_eq!(value.unwrap().value, "v");
    }
    assert_eq!(sessions_opened(&cluster), 1, "one gRPC session, kept");
    for i in 0..3 {
        assert_eq!(
            nodes_for(&cluster, "Put", &key(i)).len(),
            1,
            "put {i} ran once"
        );
        assert_eq!(
            nodes_for(&cluster, "Get", &key(i)).len(),
            1,
            "get {i} ran once"
        );
    }
}
