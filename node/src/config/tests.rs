use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::validate::HINT_WINDOW_MS_MAX;
use super::*;
use crate::cluster::PhiConfig;
use crate::lsm::{CompactionStrategy, Compression, Options, SyncPolicy};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kv-node.example.toml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn with_config(path: &Path) -> NodeArgs {
    NodeArgs {
        config: Some(path.to_owned()),
        ..NodeArgs::default()
    }
}

fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("kv-node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn parse_err(text: &str) -> String {
    NodeConfig::from_toml(text).unwrap_err().to_string()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

#[test]
fn defaults_are_valid() {
    NodeConfig::default().validate().unwrap();
    assert_eq!(NodeConfig::from_toml("").unwrap(), NodeConfig::default());
    assert_eq!(
        NodeConfig::load(&NodeArgs::default(), &no_env).unwrap(),
        NodeConfig::default()
    );
}

#[test]
fn defaults_are_the_engine_and_detector_defaults() {
    let config = NodeConfig::default();
    let (ours, engine) = (config.engine_options(), Options::default());
    assert_eq!(ours.sync, engine.sync);
    assert_eq!(ours.memtable_bytes, engine.memtable_bytes);
    assert_eq!(ours.block_bytes, engine.block_bytes);
    assert_eq!(ours.compression, engine.compression);
    assert_eq!(ours.block_cache_bytes, engine.block_cache_bytes);
    assert_eq!(ours.block_cache_prepopulate, engine.block_cache_prepopulate);
    assert_eq!(ours.row_cache_bytes, engine.row_cache_bytes);
    assert_eq!(ours.compaction, engine.compaction);
    assert_eq!(
        ours.compaction_bytes_per_sec,
        engine.compaction_bytes_per_sec
    );
    assert_eq!(ours.background_nice, engine.background_nice);
    assert_eq!(ours.background_pace_ms_max, engine.background_pace_ms_max);
    assert_eq!(
        ours.wal_recycle_segments_max,
        engine.wal_recycle_segments_max
    );
    // A lone engine has no replicas to fall in step with; a node does.
    assert_eq!(
        (engine.memtable_jitter_percent, ours.memtable_jitter_percent),
        (0, 25)
    );
    assert_eq!(
        CompactionConfig::SizeTiered(SizeTiered::default()).strategy(),
        CompactionStrategy::size_tiered()
    );
    assert_eq!(
        CompactionConfig::TimeWindow(TimeWindow::default()).strategy(),
        CompactionStrategy::time_window(24 * 3600 * 1000)
    );
    assert_eq!(config.phi_config(), PhiConfig::default());
    assert!(HINT_WINDOW_MS_MAX < engine.gc_grace_ms);
}

#[test]
fn shipped_example_loads_and_is_valid() {
    let config = NodeConfig::load(&with_config(Path::new(EXAMPLE)), &no_env).unwrap();
    assert_eq!(config.node_id, "us-east-n1");
    assert_eq!(config.dc, "us-east");
    assert_eq!(config.seeds.len(), 3);
    assert_eq!(config.listen.client, "10.0.1.8:9042".parse().unwrap());
    assert_eq!(config.engine.block_bytes, ByteSize::kib(16));
    assert_eq!(config.hints.window_ms, 3 * 3600 * 1000);
    assert_eq!(config.wan_latency_ms["eu-west"], 40);
    assert_eq!(config.wan_latency_ms["ap-south"], 90);
}

#[test]
fn effective_config_round_trips_through_toml() {
    let example = NodeConfig::from_file(Path::new(EXAMPLE)).unwrap();
    let tokens = NodeConfig {
        initial_tokens: Some(vec![topology::Token::MAX]),
        vnodes: 1,
        engine: Engine {
            sync: SyncConfig::Never {},
            compression: CompressionConfig::Lz4 {},
            compaction: CompactionConfig::SizeTiered(SizeTiered::default()),
            ..Engine::default()
        },
        ..NodeConfig::default()
    };
    for config in [NodeConfig::default(), example, tokens] {
        let text = config.to_toml().unwrap();
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), config, "{text}");
    }
}

#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let text = "node_id = \"file-node\"\ndc = \"file-dc\"\nrack = \"file-rack\"\nvnodes = 16\n";
    let path = write_file(&dir, text);
    let env = env_of(&[("KV_NODE_DC", "env-dc"), ("KV_NODE_RACK", "env-rack")]);
    let args = NodeArgs {
        dc: Some("flag-dc".into()),
        ..with_config(&path)
    };
    let config = NodeConfig::load(&args, &env).unwrap();
    assert_eq!(config.data_dir, NodeConfig::default().data_dir);
    assert_eq!(config.node_id, "file-node");
    assert_eq!(config.vnodes, 16);
    assert_eq!(config.rack, "env-rack");
    assert_eq!(config.dc, "flag-dc");
}

#[test]
fn config_file_comes_from_the_flag_else_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "dc = \"from-file\"\n");
    let env = env_of(&[(CONFIG_ENV_VAR, path.to_str().unwrap())]);
    let config = NodeConfig::load(&NodeArgs::default(), &env).unwrap();
    assert_eq!(config.dc, "from-file");

    let missing = with_config(&dir.path().join("missing.toml"));
    let err = NodeConfig::load(&missing, &env).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.toml"), "{err}");
}

#[test]
fn every_env_var_sets_its_field() {
    let env = env_of(&[
        ("KV_NODE_NODE_ID", "env-node"),
        ("KV_NODE_DATA_DIR", "/tmp/env-data"),
        ("KV_NODE_DC", "env-dc"),
        ("KV_NODE_RACK", "env-rack"),
        ("KV_NODE_LISTEN_CLIENT", "127.0.0.2:1001"),
        ("KV_NODE_LISTEN_INTERNODE", "127.0.0.2:1002"),
        ("KV_NODE_LISTEN_HTTP", "127.0.0.2:1003"),
        ("KV_NODE_SEEDS", " a.example:7000, 10.0.0.1:7000 ,"),
        ("KV_NODE_VNODES", "32"),
        ("KV_NODE_FORWARD_REMOTE_WRITES", "false"),
    ]);
    assert_eq!(env_vars().count(), 10, "a variable is not covered here");
    let config = NodeConfig::load(&NodeArgs::default(), &env).unwrap();
    assert!(!config.coordinator.forward_remote_writes);
    let config = NodeConfig::load(&NodeArgs::default(), &env).unwrap();
    assert_eq!(config.node_id, "env-node");
    assert_eq!(config.data_dir, Path::new("/tmp/env-data"));
    assert_eq!(config.dc, "env-dc");
    assert_eq!(config.rack, "env-rack");
    assert_eq!(config.listen.client, "127.0.0.2:1001".parse().unwrap());
    assert_eq!(config.listen.internode, "127.0.0.2:1002".parse().unwrap());
    assert_eq!(config.listen.http, "127.0.0.2:1003".parse().unwrap());
    assert_eq!(config.seeds, ["a.example:7000", "10.0.0.1:7000"]);
    assert_eq!(config.vnodes, 32);
}

#[test]
fn bad_env_value_names_the_variable_and_field() {
    for (var, value, field) in [
        ("KV_NODE_VNODES", "many", "vnodes"),
        ("KV_NODE_LISTEN_HTTP", "localhost:80", "listen.http"),
    ] {
        let err = NodeConfig::load(&NodeArgs::default(), &env_of(&[(var, value)])).unwrap_err();
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
    }
}

#[test]
fn every_flag_sets_its_field_over_the_environment() {
    let cli = Cli::try_parse_from([
        "kv-node",
        "--node-id=flag-node",
        "--data-dir=/tmp/flag-data",
        "--dc=flag-dc",
        "--rack=flag-rack",
        "--listen-client=127.0.0.3:2001",
        "--listen-internode=127.0.0.3:2002",
        "--listen-http=127.0.0.3:2003",
        "--seeds=a.example:7000,b.example:7000",
        "--vnodes=8",
    ])
    .unwrap();
    let env = env_of(&[("KV_NODE_DC", "env-dc"), ("KV_NODE_VNODES", "32")]);
    let config = NodeConfig::load(&cli.node, &env).unwrap();
    assert_eq!(config.node_id, "flag-node");
    assert_eq!(config.data_dir, Path::new("/tmp/flag-data"));
    assert_eq!(config.dc, "flag-dc");
    assert_eq!(config.rack, "flag-rack");
    assert_eq!(config.listen.client, "127.0.0.3:2001".parse().unwrap());
    assert_eq!(config.listen.internode, "127.0.0.3:2002".parse().unwrap());
    assert_eq!(config.listen.http, "127.0.0.3:2003".parse().unwrap());
    assert_eq!(config.seeds, ["a.example:7000", "b.example:7000"]);
    assert_eq!(config.vnodes, 8);

    let cleared = Cli::try_parse_from(["kv-node", "--seeds="]).unwrap();
    let env = env_of(&[("KV_NODE_SEEDS", "a.example:7000")]);
    assert!(NodeConfig::load(&cleared.node, &env)
        .unwrap()
        .seeds
        .is_empty());
}

/// Breaks one setting of a valid configuration.
type Breaker = fn(&mut NodeConfig);

fn broken(case: Breaker) -> ConfigError {
    let mut config = NodeConfig::default();
    case(&mut config);
    config.validate().unwrap_err()
}

#[test]
fn every_validation_error_names_its_field() {
    let cases: &[(Breaker, &str, &str)] = &[
        (|c| c.node_id.clear(), "node_id", "must not be empty"),
        (|c| c.dc.clear(), "dc", "must not be empty"),
        (|c| c.dc = "d".repeat(65), "dc", "65 bytes is above 64"),
        (|c| c.rack = "rack 1".into(), "rack", "contains ' '"),
        (|c| c.data_dir = "".into(), "data_dir", "must not be empty"),
        (
            |c| c.listen.internode = c.listen.client,
            "listen.internode",
            "127.0.0.1:9042 is also listen.client",
        ),
        (
            |c| c.listen.http = "0.0.0.0:7000".parse().unwrap(),
            "listen.http",
            "shares port 7000 with listen.internode",
        ),
        (
            |c| c.seeds = vec!["a.example:7000".into(), "foo:bar".into()],
            "seeds[1]",
            "\"foo:bar\" is not host:port",
        ),
        (
            |c| c.seeds = vec!["a.example".into()],
            "seeds[0]",
            "no port",
        ),
        (
            |c| c.seeds = vec!["a.example:0".into()],
            "seeds[0]",
            "port \"0\"",
        ),
        (
            |c| c.seeds = vec!["::1:7000".into()],
            "seeds[0]",
            "needs brackets",
        ),
        (
            |c| c.seeds = vec!["[::g]:7000".into()],
            "seeds[0]",
            "not an IPv6 address",
        ),
        (
            |c| c.seeds = vec!["10.0.0.256:7000".into()],
            "seeds[0]",
            "neither an IP address nor a DNS name",
        ),
        (
            |c| c.seeds = vec!["-a.example:7000".into()],
            "seeds[0]",
            "neither an IP address nor a DNS name",
        ),
        (|c| c.seeds = vec![":7000".into()], "seeds[0]", "neither"),
        (
            |c| c.seeds = vec!["_kv._tcp.example.internal:7000".into()],
            "seeds[0]",
            "is an SRV name, whose records give the ports: drop \":7000\"",
        ),
        (
            |c| c.seeds = vec!["_kv._tcp.-bad.example".into()],
            "seeds[0]",
            "neither an IP address nor a DNS name",
        ),
        (
            |c| c.seeds = vec!["a.example:7000".into(), "A.example:7000".into()],
            "seeds[1]",
            "listed twice",
        ),
        (|c| c.vnodes = 0, "vnodes", "0 is outside 1..=1024"),
        (
            |c| c.initial_tokens = Some(vec![topology::Token(1)]),
            "initial_tokens",
            "1 tokens, but vnodes is 256",
        ),
        (
            |c| {
                c.vnodes = 2;
                c.initial_tokens = Some(vec![topology::Token(1); 2])
            },
            "initial_tokens[1]",
            "1 is listed twice",
        ),
        (
            |c| c.engine.block_bytes = ByteSize(1024),
            "engine.block_bytes",
            "1024 is outside 4 KiB..=64 KiB",
        ),
        (
            |c| c.engine.memtable_bytes = ByteSize::kib(1),
            "engine.memtable_bytes",
            "below 64 KiB",
        ),
        (
            |c| c.worker_threads = 5000,
            "worker_threads",
            "5000 is outside 0..=1024",
        ),
        (
            |c| c.engine.memtable_jitter_percent = 60,
            "engine.memtable_jitter_percent",
            "60 is above 50",
        ),
        (
            |c| c.engine.background_nice = -5,
            "engine.background_nice",
            "-5 is outside 0..=19",
        ),
        (
            |c| c.engine.background_pace_ms_max = 86_400_000,
            "engine.background_pace_ms_max",
            "86400000 is above 60000 ms",
        ),
        (
            |c| c.engine.wal_recycle_segments_max = 17,
            "engine.wal_recycle_segments_max",
            "17 is above 16",
        ),
        (
            |c| {
                c.engine.sync = SyncConfig::Periodic(PeriodicSync {
                    interval_ms: 0,
                    writes: 1,
                })
            },
            "engine.sync",
            "positive",
        ),
        (
            |c| c.engine.compression = CompressionConfig::Zstd(ZstdCompression { level: 99 }),
            "engine.compression.level",
            "99 is outside",
        ),
        (
            |c| {
                c.engine.compaction = CompactionConfig::Leveled(Leveled {
                    l0_trigger_files: 1,
                    ..Leveled::default()
                })
            },
            "engine.compaction",
            "l0_trigger_files >= 2",
        ),
        (
            |c| {
                c.engine.compaction = CompactionConfig::SizeTiered(SizeTiered {
                    bucket_low: 2.0,
                    ..SizeTiered::default()
                })
            },
            "engine.compaction",
            "bucket_low",
        ),
        (
            |c| {
                c.engine.compaction = CompactionConfig::TimeWindow(TimeWindow {
                    window_ms: 0,
                    ..TimeWindow::default()
                })
            },
            "engine.compaction",
            "window_ms > 0",
        ),
        (
            |c| c.coordinator.write_timeout_ms = 0,
            "coordinator.write_timeout_ms",
            "0 is outside 1..=600000",
        ),
        (
            |c| c.coordinator.read_timeout_ms = 600_001,
            "coordinator.read_timeout_ms",
            "600001 is outside",
        ),
        (
            |c| c.coordinator.hlc_max_drift_ms = 0,
            "coordinator.hlc_max_drift_ms",
            "0 is outside",
        ),
        (
            |c| c.hints.window_ms = 30 * 24 * 3600 * 1000,
            "hints.window_ms",
            "is outside 1..=604800000",
        ),
        (
            |c| c.hints.bytes_max_per_target = ByteSize(0),
            "hints.bytes_max_per_target",
            "must be positive",
        ),
        (
            |c| c.gossip.interval_ms = 0,
            "gossip.interval_ms",
            "0 is outside 10..=5000",
        ),
        (
            |c| c.gossip.phi_threshold = f64::NAN,
            "gossip.phi_threshold",
            "NaN is outside 1..=16",
        ),
        (
            |c| {
                c.wan_latency_ms.insert("dc1".into(), 40);
            },
            "wan_latency_ms.dc1",
            "own DC",
        ),
        (
            |c| {
                c.wan_latency_ms.insert("dc 2".into(), 40);
            },
            "wan_latency_ms.dc 2",
            "contains ' '",
        ),
        (
            |c| {
                c.wan_latency_ms.insert("dc2".into(), 60_000);
            },
            "wan_latency_ms.dc2",
            "60000 is outside 0..=10000",
        ),
    ];
    for &(case, field, fragment) in cases {
        let err = broken(case);
        let text = err.to_string();
        assert_eq!(err.field(), Some(field), "{text}");
        assert!(text.starts_with(&format!("{field}: ")), "{text}");
        assert!(text.contains(fragment), "{text} lacks {fragment:?}");
    }
}

#[test]
fn seeds_accept_ips_and_dns_names() {
    let config = NodeConfig {
        seeds: [
            "10.0.1.7:7000",
            "[fd00::7]:7000",
            "kv-1.dc2.example.com.:7000",
            "kv_node1:7000",
            "localhost:1",
            "_kv._tcp.example.internal",
        ]
        .map(String::from)
        .to_vec(),
        ..NodeConfig::default()
    };
    config.validate().unwrap();
}

#[test]
fn seeds_parse_into_addresses_names_and_srv_names() {
    let v4 = Seed::Addr("10.0.1.7:7000".parse().unwrap());
    assert_eq!(Seed::parse("10.0.1.7:7000"), Ok(v4));
    let v6 = Seed::Addr("[fd00::7]:7000".parse().unwrap());
    assert_eq!(Seed::parse("[fd00::7]:7000"), Ok(v6));
    let host = Seed::Host {
        name: "kv-1.example.com".into(),
        port: 7000,
    };
    assert_eq!(Seed::parse("kv-1.example.com:7000"), Ok(host));
    let srv = Seed::Srv {
        name: "_kv._tcp.example.internal".into(),
    };
    assert_eq!(Seed::parse("_kv._tcp.example.internal"), Ok(srv));
    // A leading underscore alone is a host name (container runtimes use them), not SRV.
    let err = Seed::parse("_kv.example.internal").unwrap_err();
    assert!(err.contains("no port"), "{err}");
}

#[test]
fn listeners_on_port_zero_or_other_addresses_do_not_clash() {
    let mut config = NodeConfig::default();
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    config.listen.internode = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.2:9042".parse().unwrap();
    config.validate().unwrap();
}

#[test]
fn unknown_fields_are_refused_with_their_name() {
    for (text, name) in [
        ("dcc = \"dc1\"", "dcc"),
        ("[engine]\nblok_bytes = 4096", "blok_bytes"),
        ("[listen]\nclinet = \"127.0.0.1:1\"", "clinet"),
        (
            "[engine.sync]\npolicy = \"periodic\"\ninterval = 5",
            "interval",
        ),
        (
            "[engine.sync]\npolicy = \"always\"\ninterval_ms = 5",
            "interval_ms",
        ),
        (
            "[engine.compaction]\nstrategy = \"leveled\"\nbucket_low = 0.5",
            "bucket_low",
        ),
        ("[hintz]\nenabled = false", "hintz"),
    ] {
        let err = parse_err(text);
        assert!(
            err.contains(&format!("unknown field `{name}`")),
            "{text}: {err}"
        );
    }
    let err = parse_err("[engine.compaction]\nstrategy = \"tiered\"");
    assert!(err.contains("tiered"), "{err}");
}

#[test]
fn parse_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "[engine]\nblok_bytes = 4096\n");
    let err = NodeConfig::load(&with_config(&path), &no_env).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
    assert!(
        text.contains("kv-node.toml") && text.contains("blok_bytes"),
        "{text}"
    );
}

#[test]
fn strategies_take_their_own_parameters_with_defaults() {
    let text = "[engine.compaction]\nstrategy = \"size-tiered\"\nmax_threshold = 8\n";
    let config = NodeConfig::from_toml(text).unwrap();
    assert_eq!(
        config.engine.compaction,
        CompactionConfig::SizeTiered(SizeTiered {
            max_threshold: 8,
            ..SizeTiered::default()
        })
    );
    let text = "[engine.sync]\npolicy = \"periodic\"\nwrites = 10\n";
    let config = NodeConfig::from_toml(text).unwrap();
    let expected = PeriodicSync {
        writes: 10,
        ..PeriodicSync::default()
    };
    assert_eq!(config.engine.sync, SyncConfig::Periodic(expected));
}

#[test]
fn human_sizes_parse() {
    for (text, bytes) in [
        ("64MiB", 64 << 20),
        ("16 KiB", 16 << 10),
        ("1gib", 1 << 30),
        ("2TiB", 2 << 40),
        ("7B", 7),
        ("4096", 4096),
        ("0", 0),
    ] {
        assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
    }
    let config =
        NodeConfig::from_toml("[engine]\nblock_bytes = 8192\nmemtable_bytes = \"1GiB\"").unwrap();
    assert_eq!(config.engine.block_bytes, ByteSize::kib(8));
    assert_eq!(config.engine.memtable_bytes, ByteSize::gib(1));
}

#[test]
fn sizes_display_in_the_largest_exact_unit() {
    for (bytes, text) in [
        (64 << 20, "64MiB"),
        (3072, "3KiB"),
        (1536, "1536B"),
        (1000, "1000B"),
        (0, "0B"),
    ] {
        assert_eq!(ByteSize(bytes).to_string(), text);
        assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)));
    }
}

#[test]
fn bad_sizes_are_refused() {
    for (text, reason) in [
        ("", "whole number"),
        ("MiB", "whole number"),
        ("1.5GiB", "fractions"),
        ("10MB", "binary units"),
        ("-1", "whole number"),
        ("99999999TiB", "64 bits"),
        ("99999999999999999999", "64 bits"),
    ] {
        let err = text.parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains(reason), "{text}: {err}");
    }
    for (toml, reason) in [
        ("[engine]\nblock_bytes = -5", "negative"),
        ("[engine]\nblock_bytes = 1.5", "a size"),
        ("[engine]\nblock_bytes = \"16 kb\"", "binary units"),
    ] {
        let err = parse_err(toml);
        assert!(
            err.contains("block_bytes") || err.contains(reason),
            "{toml}: {err}"
        );
        assert!(err.contains(reason), "{toml}: {err}");
    }
}

#[test]
fn engine_options_carry_every_setting() {
    let engine = Engine {
        memtable_bytes: ByteSize::mib(32),
        memtable_jitter_percent: 10,
        block_bytes: ByteSize::kib(4),
        block_cache_bytes: ByteSize::mib(128),
        block_cache_prepopulate: false,
        row_cache_bytes: ByteSize(0),
        compaction_throughput_mib_per_sec: 16,
        background_pace_ms_max: 1500,
        background_nice: 19,
        background_sched_idle: true,
        wal_recycle_segments_max: 5,
        sync: SyncConfig::Always {},
        compression: CompressionConfig::Zstd(ZstdCompression { level: 3 }),
        compaction: CompactionConfig::TimeWindow(TimeWindow {
            window_ms: 3_600_000,
            min_threshold: 6,
        }),
    };
    let config = NodeConfig {
        engine,
        ..NodeConfig::default()
    };
    let options = config.engine_options();
    options.validate().unwrap();
    assert_eq!(options.memtable_bytes, 32 << 20);
    assert_eq!(options.memtable_jitter_percent, 10);
    assert_eq!(options.block_bytes, 4 << 10);
    assert_eq!(options.block_cache_bytes, 128 << 20);
    assert!(!options.block_cache_prepopulate);
    assert_eq!(options.row_cache_bytes, 0);
    assert_eq!(options.compaction_bytes_per_sec, 16 << 20);
    assert_eq!(options.background_pace_ms_max, 1500);
    assert_eq!(options.background_nice, 19);
    assert!(options.background_sched_idle);
    assert_eq!(options.wal_recycle_segments_max, 5);
    assert_eq!(options.sync, SyncPolicy::Always);
    assert_eq!(options.compression, Compression::Zstd { level: 3 });
    let window = CompactionStrategy::TimeWindow {
        window_ms: 3_600_000,
        min_threshold: 6,
    };
    assert_eq!(options.compaction, window);
}

#[test]
fn engine_variants_convert() {
    assert_eq!(SyncConfig::Never {}.policy(), SyncPolicy::Never);
    let periodic = SyncConfig::Periodic(PeriodicSync {
        interval_ms: 5,
        writes: 7,
    });
    let expected = SyncPolicy::Periodic {
        interval_ms: 5,
        writes: 7,
    };
    assert_eq!(periodic.policy(), expected);
    assert_eq!(CompressionConfig::None {}.compression(), Compression::None);
    assert_eq!(CompressionConfig::Lz4 {}.compression(), Compression::Lz4);
    let leveled = CompactionConfig::Leveled(Leveled {
        l0_trigger_files: 8,
        l1_bytes: ByteSize::mib(100),
        level_multiplier: 4,
        table_bytes_target: ByteSize::mib(32),
    });
    let expected = CompactionStrategy::Leveled {
        l0_trigger_files: 8,
        l1_bytes: 100 << 20,
        level_multiplier: 4,
        table_bytes_target: 32 << 20,
    };
    assert_eq!(leveled.strategy(), expected);
}

#[test]
fn phi_config_follows_gossip_settings() {
    let config = NodeConfig {
        gossip: Gossip {
            interval_ms: 200,
            phi_threshold: 12.0,
            acceptable_pause_ms: 1_500,
        },
        ..NodeConfig::default()
    };
    let phi = config.phi_config();
    assert_eq!(phi.threshold, 12.0);
    assert_eq!(phi.acceptable_pause_ms, 1_500);
    assert_eq!(phi.first_heartbeat_estimate_ms, 200);
}

#[test]
fn memory_prefault_follows_the_engine_budget_unless_set() {
    let defaults = NodeConfig::default();
    assert_eq!(
        defaults.memory_prefault_bytes(),
        (2 * 3 * 64 + 1024 + 64) << 20
    );
    let small = NodeConfig::from_toml(
        "[engine]\nmemtable_bytes = \"8MiB\"\nblock_cache_bytes = \"16MiB\"\nrow_cache_bytes = \"4MiB\"",
    )
    .unwrap();
    assert_eq!(
        small.memory_prefault_bytes(),
        (2 * 3 * 8 + 16 + 4 + 64) << 20
    );
    let off = NodeConfig::from_toml("memory_prefault_bytes = 0").unwrap();
    assert_eq!(off.memory_prefault_bytes(), 0);
    let set = NodeConfig::from_toml("memory_prefault_bytes = \"1GiB\"").unwrap();
    assert_eq!(set.memory_prefault_bytes(), 1 << 30);
    assert_eq!(NodeConfig::from_toml(&set.to_toml().unwrap()).unwrap(), set);
    assert!(!defaults
        .to_toml()
        .unwrap()
        .contains("memory_prefault_bytes"));
}
