//! What the cluster promises at each consistency level, checked against real kv-node processes:
//! quorum reads see quorum writes from any node, writes survive a node down per DC and reach it
//! later through hints, read repair fixes a stale replica, acknowledged writes survive a crash,
//! and bad requests are refused without writing anything.

use std::sync::Arc;
use std::time::Duration;

use client::pb::v1::{self as pb, ConsistencyLevel, PutRequest};
use client::KvError;
use cluster_tests::ops::{create_keyspace, get, put, replica_values, Client, Writers, KS};
use cluster_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_are_read_at_quorum_from_any_node() {
    let cluster = Cluster::up(2, 3).await;
    let ids: Vec<String> = cluster.nodes().iter().map(|n| n.id.clone()).collect();
    let mut clients = Vec::new();
    for id in &ids {
        clients.push(cluster.client(id).await);
    }
    create_keyspace(&mut clients[0], &[("dc1", 3), ("dc2", 3)]).await;

    let n = clients.len();
    for i in 0..30 {
        let c = &mut clients[i % n];
        put(
            c,
            &format!("k{i}"),
            &format!("v{i}"),
            ConsistencyLevel::Quorum,
        )
        .await
        .unwrap_or_else(|e| panic!("put k{i} at QUORUM: {e}"));
    }
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        for i in 0..30 {
            let got = get(c, &format!("k{i}"), ConsistencyLevel::Quorum).await;
            assert_eq!(
                got,
                Ok(Some(format!("v{i}"))),
                "k{i} read at QUORUM through {id}"
            );
        }
    }
    let scanned = scan_all(&mut clients[3], ConsistencyLevel::Quorum, 7).await;
    let tokens: Vec<&[u8]> = scanned.iter().map(|(_, t)| &t[..]).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] <= w[1]),
        "scan is in token order"
    );
    let mut keys: Vec<String> = scanned.into_iter().map(|(k, _)| k).collect();
    keys.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "a paged QUORUM scan of the whole ring returns every key once"
    );
}

/// Every (key, token) of a whole-ring scan, page by page.
async fn scan_all(
    c: &mut Client,
    level: ConsistencyLevel,
    page_size: u32,
) -> Vec<(String, Vec<u8>)> {
    let whole = topology::TokenRange::new(topology::Token(0), topology::Token(0));
    let whole = client::encode_token_range(whole);
    let mut out = Vec::new();
    let mut paging_state = Vec::new();
    for _ in 0..1000 {
        let page = c
            .scan(pb::ScanRequest {
                keyspace: KS.into(),
                consistency: level as i32,
                range: Some(whole.clone()),
                page_size,
                paging_state: paging_state.clone().into(),
            })
            .await
            .expect("Scan")
            .into_inner();
        assert!(
            page.entries.len() <= page_size as usize,
            "a page holds at most page_size"
        );
        for e in page.entries {
            out.push((
                String::from_utf8_lossy(&e.key).into_owned(),
                e.token.to_vec(),
            ));
        }
        if page.paging_state.is_empty() {
            return out;
        }
        paging_state = page.paging_state.to_vec();
    }
    panic!("the scan did not end within 1000 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_down_per_dc_local_and_each_quorum_succeed_all_is_unavailable_hints_arrive() {
    let cluster = Cluster::up(2, 3).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3), ("dc2", 3)]).await;

    cluster.kill("dc1-n3").await;
    cluster.kill("dc2-n3").await;
    cluster.wait_seen_down(&["dc1-n1"], "dc1-n3").await;
    cluster.wait_seen_down(&["dc1-n1"], "dc2-n3").await;

    for i in 0..10 {
        put(
            &mut c,
            &format!("lq{i}"),
            "local",
            ConsistencyLevel::LocalQuorum,
        )
        .await
        .unwrap_or_else(|e| panic!("LOCAL_QUORUM with one node down per DC: {e}"));
        put(
            &mut c,
            &format!("eq{i}"),
            "each",
            ConsistencyLevel::EachQuorum,
        )
        .await
        .unwrap_or_else(|e| panic!("EACH_QUORUM with one node down per DC: {e}"));
    }
    let err = put(&mut c, "all", "x", ConsistencyLevel::All)
        .await
        .unwrap_err();
    let KvError::Unavailable(u) = &err else {
        panic!("ALL with two nodes down: expected UNAVAILABLE, got {err:?}")
    };
    assert_eq!((u.required, u.alive), (6, 4), "{err}");
    let message = err.to_string();
    assert!(
        message.contains('6') && message.contains('4'),
        "names required and alive: {message}"
    );
    assert_eq!(
        replica_values(&mut c, "all")
            .await
            .values()
            .filter(|v| v.is_some())
            .count(),
        0,
        "an UNAVAILABLE write wrote nothing"
    );

    cluster.start("dc1-n3").await;
    cluster.start("dc2-n3").await;
    for key in (0..10).flat_map(|i| [format!("lq{i}"), format!("eq{i}")]) {
        cluster
            .wait_until(
                || {
                    let (mut c, key) = (c.clone(), key.clone());
                    async move {
                        let values = replica_values(&mut c, &key).await;
                        values.len() == 6 && values.values().all(|v| v.is_some())
                    }
                },
                Duration::from_secs(30),
                &format!("hints bring {key} to the restarted replicas"),
            )
            .await;
    }
}

/// Node ids of the replicas of `key`, from Inspect.
async fn replicas_of(c: &mut Client, key: &str) -> Vec<String> {
    replica_values(c, key).await.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_all_repairs_a_stale_replica() {
    // Four nodes, three replicas per key: the coordinator of the second write is not a
    // replica, and is crashed with the hint it holds, so only read repair can fix the replica
    // that missed the write.
    let cluster = Cluster::up(1, 4).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let mut key = String::new();
    let mut replicas = Vec::new();
    for i in 0..100 {
        key = format!("stale{i}");
        replicas = replicas_of(&mut c, &key).await;
        if !replicas.iter().any(|r| r == "dc1-n1") {
            break;
        }
    }
    assert!(
        !replicas.iter().any(|r| r == "dc1-n1"),
        "found a key dc1-n1 does not replicate"
    );
    put(&mut c, &key, "old", ConsistencyLevel::All)
        .await
        .expect("write old at ALL");

    let stale = replicas[0].clone();
    cluster.kill(&stale).await;
    cluster.wait_seen_down(&["dc1-n1"], &stale).await;
    put(&mut c, &key, "new", ConsistencyLevel::Quorum)
        .await
        .expect("write new at QUORUM");
    cluster.kill("dc1-n1").await;
    cluster.start(&stale).await;

    let reader = replicas[1].clone();
    let mut r = cluster.client(&reader).await;
    let values = replica_values(&mut r, &key).await;
    assert_eq!(
        values[&stale],
        Some("old".into()),
        "the restarted replica missed the write"
    );

    assert_eq!(
        get(&mut r, &key, ConsistencyLevel::All).await,
        Ok(Some("new".into()))
    );
    let values = replica_values(&mut r, &key).await;
    assert!(
        values.values().all(|v| v.as_deref() == Some("new")),
        "repaired: {values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_quorum_writes_survive_a_sigkill_and_reach_the_node_by_hints() {
    let cluster = Arc::new(Cluster::up(1, 3).await);
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;

    let writers = Writers::start(vec![
        cluster.client("dc1-n1").await,
        cluster.client("dc1-n2").await,
    ]);
    let w = &writers;
    cluster
        .wait_until(
            || async move { w.acked() >= 100 },
            Duration::from_secs(30),
            "100 acknowledged writes",
        )
        .await;
    cluster.kill("dc1-n3").await;
    cluster
        .wait_until(
            || async move { w.acked() >= 300 },
            Duration::from_secs(30),
            "200 more writes with dc1-n3 dead",
        )
        .await;
    let keys = writers.finish().await;
    cluster.start("dc1-n3").await;

    let mut n3 = cluster.client("dc1-n3").await;
    let last = keys.last().expect("writes were acknowledged").clone();
    cluster
        .wait_until(
            || {
                let (mut c, key) = (n3.clone(), last.clone());
                async move {
                    replica_values(&mut c, &key).await.get("dc1-n3") == Some(&Some(key.clone()))
                }
            },
            Duration::from_secs(30),
            "the last acknowledged write reaches dc1-n3 by hint replay",
        )
        .await;
    for key in &keys {
        assert_eq!(
            get(&mut n3, key, ConsistencyLevel::Quorum).await,
            Ok(Some(key.clone())),
            "acknowledged write {key} read at QUORUM"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_by_name_and_write_nothing() {
    let cluster = Cluster::up(1, 1).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 1)]).await;
    let invalid_field = |r: Result<u64, KvError>| match r {
        Err(KvError::InvalidArgument(a)) => a.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let request = |key: Vec<u8>, value: Vec<u8>, level: i32| PutRequest {
        keyspace: KS.into(),
        consistency: level,
        key: key.into(),
        value: value.into(),
        timestamp: None,
        ttl_ms: None,
    };
    let send = |r: PutRequest| {
        let mut c = c.clone();
        async move {
            c.put(r)
                .await
                .map(|r| r.into_inner().timestamp)
                .map_err(|s| KvError::from_status(&s))
        }
    };
    let quorum = ConsistencyLevel::Quorum as i32;

    let mut unknown = request(b"k".to_vec(), b"v".to_vec(), quorum);
    unknown.keyspace = "nope".into();
    match send(unknown).await {
        Err(KvError::KeyspaceNotFound(k)) => assert_eq!(k.keyspace, "nope"),
        other => panic!("unknown keyspace: {other:?}"),
    }
    let big_key = vec![b'k'; client::MAX_KEY_BYTES + 1];
    assert_eq!(
        invalid_field(send(request(big_key.clone(), b"v".to_vec(), quorum)).await),
        "key"
    );
    let big_value = vec![0u8; client::MAX_VALUE_BYTES + 1];
    assert_eq!(
        invalid_field(send(request(b"bigv".to_vec(), big_value, quorum)).await),
        "value"
    );
    assert_eq!(
        invalid_field(send(request(b"lvl".to_vec(), b"v".to_vec(), 0)).await),
        "consistency"
    );
    assert_eq!(
        invalid_field(send(request(b"lvl".to_vec(), b"v".to_vec(), 42)).await),
        "consistency"
    );
    let mut ttl0 = request(b"ttl".to_vec(), b"v".to_vec(), quorum);
    ttl0.ttl_ms = Some(0);
    assert_eq!(invalid_field(send(ttl0).await), "ttl_ms");
    assert_eq!(
        invalid_field(send(request(Vec::new(), b"v".to_vec(), quorum)).await),
        "key"
    );

    let malformed = c
        .batch(pb::BatchRequest {
            keyspace: KS.into(),
            consistency: quorum,
            mutations: vec![
                pb::Mutation {
                    key: "fine".into(),
                    op: Some(pb::mutation::Op::Value("v".into())),
                    ttl_ms: None,
                },
                pb::Mutation {
                    key: "neither".into(),
                    op: None,
                    ttl_ms: None,
                },
            ],
            timestamp: None,
            ttl_ms: None,
        })
        .await
        .map_err(|s| KvError::from_status(&s));
    match malformed {
        Err(KvError::InvalidArgument(a)) => assert_eq!(a.field, "mutations[1]"),
        other => panic!("a mutation with neither value nor delete: {other:?}"),
    }

    for key in ["bigv", "lvl", "ttl", "fine", "neither"] {
        assert_eq!(
            get(&mut c, key, ConsistencyLevel::One).await,
            Ok(None),
            "{key} was not written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_makes_an_all_write_time_out_with_the_acks_counted() {
    let cluster = Cluster::up(1, 3).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    // Paused: the detector still believes the node alive for a few seconds, so the
    // coordinator tries it and waits for the 2 s write timeout.
    let paused = cluster.pause("dc1-n3");
    let result = put(&mut c, "paused", "v", ConsistencyLevel::All).await;
    drop(paused);
    match result {
        Err(KvError::Timeout(t)) => {
            assert_eq!((t.required, t.received), (3, 2), "{t:?}");
            assert!(t.is_write && t.write_may_have_applied, "{t:?}");
        }
        other => panic!("expected TIMEOUT, got {other:?}"),
    }
    cluster
        .wait_until(
            || {
                let mut c = c.clone();
                async move {
                    replica_values(&mut c, "paused")
                        .await
                        .values()
                        .all(|v| v.is_some())
                }
            },
            Duration::from_secs(30),
            "the resumed replica gets the timed-out write (hint or late apply)",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_waiting_on_a_paused_replica_are_answered_by_a_spare() {
    let cluster = Cluster::up(1, 3).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let keys: Vec<String> = (0..60).map(|i| format!("spec{i}")).collect();
    for k in &keys {
        put(&mut c, k, k, ConsistencyLevel::All)
            .await
            .unwrap_or_else(|e| panic!("put {k} at ALL: {e}"));
    }
    let retries_before = cluster
        .metric("dc1-n1", "kv_speculative_retries_total")
        .await;
    // Paused, not killed: the detector believes it alive for seconds, so reads still ask it
    // for digests, and only a speculative retry to dc1-n2 answers them within the deadline.
    let paused = cluster.pause("dc1-n3");
    let mut reads = Vec::new();
    for k in &keys {
        reads.push(get(&mut c, k, ConsistencyLevel::Quorum).await);
    }
    let retries = cluster
        .metric("dc1-n1", "kv_speculative_retries_total")
        .await
        - retries_before;
    drop(paused);
    for (k, read) in keys.iter().zip(reads) {
        assert_eq!(
            read,
            Ok(Some(k.clone())),
            "{k} read at QUORUM with dc1-n3 paused"
        );
    }
    assert!(
        retries >= 1.0,
        "the reads that asked dc1-n3 were retried on dc1-n2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_succeeds_with_only_a_hint_and_the_hint_arrives() {
    let cluster = Cluster::up(1, 2).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 1)]).await;
    let mut key = String::new();
    for i in 0..100 {
        key = format!("any{i}");
        if replicas_of(&mut c, &key).await == ["dc1-n2"] {
            break;
        }
    }
    assert_eq!(
        replicas_of(&mut c, &key).await,
        ["dc1-n2"],
        "a key only dc1-n2 holds"
    );
    cluster.kill("dc1-n2").await;
    cluster.wait_seen_down(&["dc1-n1"], "dc1-n2").await;

    match put(&mut c, &key, "hinted", ConsistencyLevel::One).await {
        Err(KvError::Unavailable(u)) => assert_eq!((u.required, u.alive), (1, 0)),
        other => panic!("ONE with the only replica down: {other:?}"),
    }
    put(&mut c, &key, "hinted", ConsistencyLevel::Any)
        .await
        .expect("ANY is met by a hint alone");
    cluster.start("dc1-n2").await;
    cluster
        .wait_until(
            || {
                let (mut c, key) = (c.clone(), key.clone());
                async move {
                    replica_values(&mut c, &key).await.get("dc1-n2") == Some(&Some("hinted".into()))
                }
            },
            Duration::from_secs(30),
            "the hint reaches dc1-n2",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_remote_replica_on_pipes_when_forwarding_is_off() {
    let cluster = Cluster::builder(2, 3)
        .env("KV_NODE_FORWARD_REMOTE_WRITES", "false")
        .up()
        .await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3), ("dc2", 3)]).await;
    for i in 0..10 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        put(&mut c, &key, &value, ConsistencyLevel::EachQuorum)
            .await
            .unwrap_or_else(|e| panic!("put {key} at EACH_QUORUM: {e}"));
        let key_ref = &key;
        let value_ref = &value;
        cluster
            .wait_until(
                || {
                    let mut c = c.clone();
                    async move {
                        let values = replica_values(&mut c, key_ref).await;
                        values.len() == 6
                            && values.values().all(|v| v.as_deref() == Some(value_ref))
                    }
                },
                Duration::from_secs(10),
                "all six replicas hold the write",
            )
            .await;
    }
}
