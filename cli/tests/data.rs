//! Runs the real kvctl against in-process fake clusters (`client::testing`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use client::pb::v1::{self as pb, ConsistencyLevel};
use client::testing::FakeCluster;
use client::KvError;
use serde_json::Value;

const KS: &str = "app";

/// kvctl with the given arguments and optional stdin, off the runtime's threads so the fake
/// servers keep answering.
async fn kvctl(args: Vec<String>, stdin: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(&args)
            .env_remove("KV_ENDPOINTS")
            .env_remove("KV_KEYSPACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvctl runs");
        let mut input = child.stdin.take().expect("piped");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().expect("kvctl ends")
    })
    .await
    .unwrap()
}

fn args(cluster: &FakeCluster, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["--endpoints".to_owned(), cluster.addresses().join(",")];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "kvctl failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

async fn cluster() -> FakeCluster {
    let cluster = FakeCluster::start_dcs(&[("dc1", 3), ("dc2", 3)]).await;
    cluster.create_keyspace(KS, &[("dc1", 3), ("dc2", 2)]);
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn argument_errors_are_refused_with_a_clear_message() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["get", "k", "-k", KS, "--cl", "most"],
            "invalid consistency level",
        ),
        (
            &["put", "k", "v", "-k", KS, "--ttl", "30"],
            "ms, s, m, h or d",
        ),
        (
            &["keyspace", "create", "x", "--replication", "dc1=3"],
            "is not DC:RF",
        ),
        (
            &["keyspace", "create", "x", "--replication", "dc1:0"],
            "at least 1",
        ),
        (&["get", "k"], "pass --keyspace NAME or set KV_KEYSPACE"),
        (&["bench", "--runtime-threads", "0"], "--runtime-threads"),
    ];
    for (argv, expected) in cases {
        let out = kvctl(argv.iter().map(|s| s.to_string()).collect(), None).await;
        assert_eq!(out.status.code(), Some(2), "{argv:?}");
        assert!(
            stderr(&out).contains(expected),
            "{argv:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_del_round_trip_in_text_and_json() {
    let cluster = cluster().await;
    let out = kvctl(
        args(
            &cluster,
            &["put", "greeting", "hello world", "-k", KS, "--ttl", "1h"],
        ),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kvctl(
        args(
            &cluster,
            &["get", "greeting", "-k", KS, "--cl", "local_quorum"],
        ),
        None,
    )
    .await;
    assert_eq!(stdout(&out), "hello world\n");

    let got = ok_json(
        &kvctl(
            args(
                &cluster,
                &["get", "greeting", "-k", KS, "-o", "json", "--cl", "QUORUM"],
            ),
            None,
        )
        .await,
    );
    assert_eq!(got["found"], true);
    assert_eq!(got["value"], "hello world");
    assert!(got["timestamp"].as_u64().unwrap() > 0);
    assert!(got["expires_at_ms"].as_u64().is_some());

    let out = kvctl(args(&cluster, &["del", "greeting", "-k", KS]), None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kvctl(args(&cluster, &["get", "greeting", "-k", KS]), None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    // Binary values come back as base64 in JSON, and say so.
    let batch = "put a 1\n# comment\n{\"op\":\"put\",\"key\":\"bin\",\"value_base64\":\"AP8=\"}\nput b two words\ndel a\n";
    let done = ok_json(
        &kvctl(
            args(&cluster, &["batch", "-", "-k", KS, "-o", "json"]),
            Some(batch),
        )
        .await,
    );
    assert_eq!(done["mutations"], 4);
    let got = ok_json(
        &kvctl(
            args(&cluster, &["mget", "a", "b", "bin", "-k", KS, "-o", "json"]),
            None,
        )
        .await,
    );
    let results = got["results"].as_array().unwrap();
    assert_eq!(results[0]["found"], false);
    assert_eq!(results[1]["value"], "two words");
    assert_eq!(results[2]["value_base64"], "AP8=");

    let scanned = ok_json(
        &kvctl(
            args(
                &cluster,
                &["scan", "-k", KS, "--page-size", "1", "-o", "json"],
            ),
            None,
        )
        .await,
    );
    assert_eq!(scanned["count"], 2);
    let limited = ok_json(
        &kvctl(
            args(&cluster, &["scan", "-k", KS, "--limit", "1", "-o", "json"]),
            None,
        )
        .await,
    );
    assert_eq!(limited["count"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_come_from_the_environment_or_a_cluster_directory() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Value> = cluster
        .addresses()
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({"id": format!("n{i}"), "dc": "dc1", "rack": "r1", "client_address": a, "internode_address": "127.0.0.1:1", "http_address": "x", "dir": "/tmp", "pid": 1, "future_field": [1, 2]}))
        .collect();
    let file = serde_json::json!({"cluster_name": "test", "nodes": nodes, "started_at": "now"});
    std::fs::write(dir.path().join("cluster.json"), file.to_string()).unwrap();
    let argv = vec![
        "--dir".to_owned(),
        dir.path().display().to_string(),
        "keyspace".into(),
        "list".into(),
        "-o".into(),
        "json".into(),
    ];
    let listed = ok_json(&kvctl(argv, None).await);
    assert_eq!(listed["keyspaces"][0]["name"], KS);

    let empty = tempfile::tempdir().unwrap();
    let argv = vec![
        "--dir".to_owned(),
        empty.path().display().to_string(),
        "keyspace".into(),
        "list".into(),
    ];
    let out = kvctl(argv, None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cluster.json"), "{}", stderr(&out));

    let address = cluster.addresses()[0].clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(["get", "nothing", "-o", "json"])
            .env("KV_ENDPOINTS", address)
            .env("KV_KEYSPACE", KS)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["found"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_errors_are_spelled_out() {
    let cluster = cluster().await;
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
    let out = kvctl(
        args(&cluster, &["put", "k", "v", "-k", KS, "--cl", "all"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "UNAVAILABLE: ALL needs 6 replicas, 4 alive (dc1: 2 of 3 alive, dc2: 2 of 3 alive)"
        ),
        "{}",
        stderr(&out)
    );
    cluster.fail_with(None);
    let out = kvctl(
        args(
            &cluster,
            &["keyspace", "create", "other", "--replication", "mars:1"],
        ),
        None,
    )
    .await;
    assert!(
        stderr(&out).contains("INVALID_ARGUMENT: field keyspace.replication[mars]"),
        "{}",
        stderr(&out)
    );
    let out = kvctl(args(&cluster, &["keyspace", "describe", "nope"]), None).await;
    assert!(
        stderr(&out).contains("NOT_FOUND: keyspace nope does not exist"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keyspaces_inspect_status_and_ring() {
    let cluster = cluster().await;
    let created = ok_json(
        &kvctl(
            args(
                &cluster,
                &[
                    "keyspace",
                    "create",
                    "logs",
                    "--replication",
                    "dc1:2",
                    "-o",
                    "json",
                ],
            ),
            None,
        )
        .await,
    );
    assert_eq!(created["created"], true);
    assert_eq!(created["keyspace"]["replication"]["dc1"], 2);
    let again = ok_json(
        &kvctl(
            args(
                &cluster,
                &[
                    "keyspace",
                    "create",
                    "logs",
                    "--replication",
                    "dc1:3",
                    "--if-not-exists",
                    "-o",
                    "json",
                ],
            ),
            None,
        )
        .await,
    );
    assert_eq!(again["created"], false);

    let out = kvctl(args(&cluster, &["put", "k", "v", "-k", KS]), None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let agreed = ok_json(
        &kvctl(
            args(&cluster, &["inspect", "k", "-k", KS, "-o", "json"]),
            None,
        )
        .await,
    );
    assert_eq!(agreed["agree"], true);
    assert_eq!(agreed["dcs"].as_array().unwrap().len(), 2);

    let stale = cluster.replicas(KS, b"k", "dc2")[0].clone();
    cluster.set_replica_cell(&stale, KS, b"k", None);
    let out = kvctl(args(&cluster, &["inspect", "k", "-k", KS]), None).await;
    assert!(
        stdout(&out).contains("REPLICAS DISAGREE: 1 of 5"),
        "{}",
        stdout(&out)
    );
    let differs = ok_json(
        &kvctl(
            args(&cluster, &["inspect", "k", "-k", KS, "-o", "json"]),
            None,
        )
        .await,
    );
    assert_eq!(differs["agree"], false);

    cluster.set_liveness("dc2-n3", pb::Liveness::Down);
    let status = ok_json(&kvctl(args(&cluster, &["status", "-k", KS, "-o", "json"]), None).await);
    let dcs = status["dcs"].as_array().unwrap();
    assert_eq!(dcs.len(), 2);
    let total = |dc: &Value| -> f64 {
        dc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["owns_percent"].as_f64().unwrap())
            .sum()
    };
    assert!((total(&dcs[0]) - 300.0).abs() < 1e-6);
    assert!((total(&dcs[1]) - 200.0).abs() < 1e-6);
    assert_eq!(dcs[1]["nodes"][2]["status"], "DN");
    let text = stdout(&kvctl(args(&cluster, &["status"]), None).await);
    assert!(
        text.contains("Datacenter: dc1") && text.contains("UN") && text.contains("DN"),
        "{text}"
    );

    let ring = ok_json(&kvctl(args(&cluster, &["ring", "-o", "json"]), None).await);
    let tokens = ring["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6 * 16);
    let values: Vec<u128> = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]));

    let dropped = ok_json(
        &kvctl(
            args(&cluster, &["keyspace", "drop", "logs", "-o", "json"]),
            None,
        )
        .await,
    );
    assert_eq!(dropped["dropped"], true);
    let out = kvctl(
        args(&cluster, &["keyspace", "drop", "logs", "--if-exists"]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
}
