//! `kvctl bench` against a real 3-node cluster: a small YCSB-A load and run finish with every
//! operation counted and none failed.

use std::time::Duration;

use cluster_tests::{kvctl, Cluster};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ycsb_a_runs_without_errors() {
    let cluster = Cluster::up(1, 3).await;
    let args = [
        "bench",
        "--dir",
        cluster.dir_arg(),
        "--workload",
        "a",
        "--records",
        "200",
        "--ops",
        "500",
        "--value-size",
        "100",
        "--cl",
        "QUORUM",
        "--runtime-threads",
        "2",
        "-o",
        "json",
    ];
    let out = kvctl(&args, Duration::from_secs(120)).await;
    assert!(out.success, "kvctl bench failed: {}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(report["workload"], "a");
    assert_eq!(report["runtime_threads"], 2);
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "{report}");

    let load = &phases[0];
    assert_eq!(load["phase"], "load");
    assert_eq!(load["ops"], 200, "{load}");
    assert_eq!(load["operations"]["insert"]["count"], 200, "{load}");

    let run = &phases[1];
    assert_eq!(run["phase"], "run");
    assert_eq!(run["ops"], 500, "{run}");
    assert_eq!(run["ok"], 500, "{run}");
    let reads = run["operations"]["read"]["count"].as_u64().expect("reads");
    let updates = run["operations"]["update"]["count"]
        .as_u64()
        .expect("updates");
    assert_eq!(reads + updates, 500);
    // 50/50 drawn 500 times: far outside 150..350 would mean a broken mix.
    assert!((150..350).contains(&reads), "{reads} reads of 500");
    // Every record was loaded, so every read finds its key.
    assert_eq!(run["not_found"], 0, "{run}");
    for phase in phases {
        for (kind, n) in phase["errors"].as_object().expect("errors") {
            assert_eq!(n, 0, "{kind} errors in {phase}");
        }
        assert!(phase["ops_per_sec"].as_f64().expect("ops/s") > 0.0);
        let p99 = phase["operations"].as_object().expect("ops").values();
        for op in p99 {
            assert!(op["p99_us"].as_u64().expect("p99") >= op["p50_us"].as_u64().expect("p50"));
        }
    }

    // Open loop: every operation is sent, none before it is due, so the run cannot go faster
    // than the rate however fast the cluster answers.
    let open = [
        "bench",
        "--dir",
        cluster.dir_arg(),
        "--records",
        "200",
        "--ops",
        "400",
        "--value-size",
        "100",
        "--cl",
        "QUORUM",
        "--phase",
        "run",
        "--rate",
        "400",
        "--inflight",
        "4",
        "-o",
        "json",
    ];
    let out = kvctl(&open, Duration::from_secs(120)).await;
    assert!(out.success, "open-loop kvctl bench failed: {}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    let run = &report["phases"][0];
    assert_eq!(run["ok"], 400, "{run}");
    let rate = run["ops_per_sec"].as_f64().expect("ops/s");
    assert!(rate <= 400.0 * 1.05, "open loop at 400 ops/s ran at {rate}");
}
