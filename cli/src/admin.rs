//! Cluster commands: keyspaces, inspect, status.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use client::pb::v1 as pb;
use client::KvError;
use serde_json::{json, Map, Value};
use topology::{Keyspace, Ring};

use crate::connect::{block_on, Target};
use crate::data::keyspace_or_env;
use crate::errors::{kv_error, kv_error_json, replication};
use crate::output::{bytes_json, bytes_text, percent, print_json, table, Format};
use crate::Outcome;

#[derive(Subcommand)]
pub enum KeyspaceCommand {
    /// Create a keyspace
    Create {
        name: String,
        /// Replicas per DC, e.g. dc1:3,dc2:3
        #[arg(long, value_name = "DC:RF,...", value_parser = parse_replication)]
        replication: BTreeMap<String, u32>,
        /// Succeed without change when it exists
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Show a keyspace's replication
    Describe { name: String },
    /// List every keyspace
    List,
    /// Drop a keyspace and, in the background, its data
    Drop {
        name: String,
        /// Succeed without change when it does not exist
        #[arg(long)]
        if_exists: bool,
    },
}

/// `dc1:3,dc2:3`: at least one DC, each named once with a factor of at least 1.
pub(crate) fn parse_replication(s: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',') {
        let Some((dc, rf)) = item.split_once(':') else {
            return Err(format!("{item:?} is not DC:RF (e.g. dc1:3,dc2:3)"));
        };
        let dc = dc.trim();
        if dc.is_empty() {
            return Err(format!("{item:?} names no DC"));
        }
        let rf = match rf.trim().parse::<u32>() {
            Ok(rf) if rf >= 1 => rf,
            _ => {
                return Err(format!(
                    "replication factor of {dc} must be a whole number of at least 1, got {rf:?}"
                ))
            }
        };
        if out.insert(dc.to_owned(), rf).is_some() {
            return Err(format!("{dc} is given twice"));
        }
    }
    Ok(out)
}

fn keyspace_json(k: &pb::Keyspace) -> Value {
    json!({"name": k.name, "replication": k.replication, "schema_version": k.schema_version})
}

pub fn keyspace(
    command: KeyspaceCommand,
    target: &Target,
    format: Format,
) -> anyhow::Result<Outcome> {
    block_on(async {
        let client = target.connect().await?;
        match command {
            KeyspaceCommand::Create {
                name,
                replication: rf,
                if_not_exists,
            } => {
                let (ks, created) = client.create_keyspace(&name, rf, if_not_exists).await?;
                match format {
                    Format::Json => {
                        print_json(&json!({"keyspace": keyspace_json(&ks), "created": created}))
                    }
                    Format::Text if created => {
                        println!("created {} with replication {}", ks.name, replication(&ks))
                    }
                    Format::Text => {
                        println!("exists: {} with replication {}", ks.name, replication(&ks))
                    }
                }
            }
            KeyspaceCommand::Describe { name } => {
                let ks = client.describe_keyspace(&name).await?;
                match format {
                    Format::Json => print_json(&keyspace_json(&ks)),
                    Format::Text => println!(
                        "{}  replication {}  schema version {}",
                        ks.name,
                        replication(&ks),
                        ks.schema_version
                    ),
                }
            }
            KeyspaceCommand::List => {
                let list = client.list_keyspaces().await?;
                match format {
                    Format::Json => print_json(&json!({
                        "keyspaces": list.keyspaces.iter().map(keyspace_json).collect::<Vec<_>>(),
                        "schema_version": list.schema_version,
                    })),
                    Format::Text => {
                        let rows: Vec<Vec<String>> = list
                            .keyspaces
                            .iter()
                            .map(|k| {
                                vec![k.name.clone(), replication(k), k.schema_version.to_string()]
                            })
                            .collect();
                        print!(
                            "{}",
                            table(&["NAME", "REPLICATION", "SCHEMA VERSION"], &rows)
                        );
                    }
                }
            }
            KeyspaceCommand::Drop { name, if_exists } => {
                let dropped = client.drop_keyspace(&name, if_exists).await?;
                match format {
                    Format::Json => print_json(&json!({"name": name, "dropped": dropped})),
                    Format::Text if dropped => println!("dropped {name}"),
                    Format::Text => println!("no keyspace {name}; nothing dropped"),
                }
            }
        }
        Ok(Outcome::Done)
    })
}

#[derive(Args)]
pub struct InspectArgs {
    key: String,
    /// Keyspace of the key [env: KV_KEYSPACE]
    #[arg(long, short = 'k', value_name = "NAME")]
    keyspace: Option<String>,
}

/// What a replica holds, reduced to what must agree across replicas.
#[derive(PartialEq)]
enum Held<'a> {
    Cell(&'a pb::Cell),
    Nothing,
    Unknown,
}

pub fn inspect(args: InspectArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = keyspace_or_env(args.keyspace.as_deref())?;
    let response = block_on(async {
        let client = target.connect().await?;
        Ok(client.inspect(&keyspace, args.key.clone()).await?)
    })?;
    let token =
        client::decode_token(&response.token).map_or_else(|_| "?".to_owned(), |t| t.to_string());
    let replicas: Vec<&pb::ReplicaCell> = response.dcs.iter().flat_map(|d| &d.replicas).collect();
    // The newest cell is what a read at ALL would return; a replica differing from it is stale.
    let newest = replicas
        .iter()
        .filter_map(|r| match held(r) {
            Held::Cell(c) => Some(c),
            _ => None,
        })
        .max_by_key(|c| c.timestamp);
    let reference = newest.map_or(Held::Nothing, Held::Cell);
    let differs = |r: &pb::ReplicaCell| {
        let h = held(r);
        h != Held::Unknown && h != reference
    };
    let disagreeing = replicas.iter().filter(|r| differs(r)).count();
    let unknown = replicas.iter().filter(|r| held(r) == Held::Unknown).count();
    match format {
        Format::Json => {
            let dcs: Vec<Value> = response
                .dcs
                .iter()
                .map(|d| {
                    let replicas: Vec<Value> = d
                        .replicas
                        .iter()
                        .map(|r| {
                            let mut map = Map::new();
                            map.insert("node".into(), r.node_id.clone().into());
                            map.insert("rack".into(), r.rack.clone().into());
                            map.insert(
                                "agrees".into(),
                                (!differs(r) && held(r) != Held::Unknown).into(),
                            );
                            match &r.outcome {
                                Some(pb::replica_cell::Outcome::Cell(c)) => {
                                    map.insert("cell".into(), cell_json(c));
                                }
                                Some(pb::replica_cell::Outcome::Missing(_)) => {
                                    map.insert("cell".into(), Value::Null);
                                }
                                Some(pb::replica_cell::Outcome::Error(e)) => {
                                    map.insert(
                                        "error".into(),
                                        kv_error_json(&KvError::from(e.clone())),
                                    );
                                }
                                None => {
                                    map.insert("error".into(), json!({"message": "no outcome"}));
                                }
                            }
                            Value::Object(map)
                        })
                        .collect();
                    json!({"dc": d.dc, "replicas": replicas})
                })
                .collect();
            let mut map = Map::new();
            bytes_json(&mut map, "key", &response.key);
            map.insert("token".into(), token.into());
            map.insert("agree".into(), (disagreeing == 0).into());
            map.insert("unreachable".into(), unknown.into());
            map.insert("dcs".into(), dcs.into());
            print_json(&Value::Object(map));
        }
        Format::Text => {
            println!("key {}  token {token}", bytes_text(&response.key));
            for d in &response.dcs {
                println!("\n{}", d.dc);
                let rows: Vec<Vec<String>> = d
                    .replicas
                    .iter()
                    .map(|r| {
                        let mark = if differs(r) { "!" } else { "" }.to_owned();
                        let (content, timestamp, expires) = match &r.outcome {
                            Some(pb::replica_cell::Outcome::Cell(c)) => (
                                match &c.content {
                                    Some(pb::cell::Content::Value(v)) => bytes_text(v),
                                    Some(pb::cell::Content::Tombstone(_)) => {
                                        "(tombstone)".to_owned()
                                    }
                                    None => "(malformed cell)".to_owned(),
                                },
                                c.timestamp.to_string(),
                                c.expires_at_ms
                                    .map_or_else(|| "-".to_owned(), |e| e.to_string()),
                            ),
                            Some(pb::replica_cell::Outcome::Missing(_)) => {
                                ("(nothing)".to_owned(), "-".to_owned(), "-".to_owned())
                            }
                            Some(pb::replica_cell::Outcome::Error(e)) => (
                                format!("ERROR {}", kv_error(&KvError::from(e.clone()))),
                                "-".to_owned(),
                                "-".to_owned(),
                            ),
                            None => (
                                "ERROR no outcome".to_owned(),
                                "-".to_owned(),
                                "-".to_owned(),
                            ),
                        };
                        vec![
                            mark,
                            r.node_id.clone(),
                            r.rack.clone(),
                            timestamp,
                            expires,
                            content,
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["", "NODE", "RACK", "TIMESTAMP", "EXPIRES_AT_MS", "CELL"],
                        &rows
                    )
                );
            }
            println!();
            if disagreeing == 0 {
                println!(
                    "replicas agree ({} of {} answered)",
                    replicas.len() - unknown,
                    replicas.len()
                );
            } else {
                println!(
                    "REPLICAS DISAGREE: {disagreeing} of {} differ from the newest cell (marked !); {unknown} could not be asked",
                    replicas.len()
                );
            }
        }
    }
    Ok(Outcome::Done)
}

fn held(r: &pb::ReplicaCell) -> Held<'_> {
    match &r.outcome {
        Some(pb::replica_cell::Outcome::Cell(c)) => Held::Cell(c),
        Some(pb::replica_cell::Outcome::Missing(_)) => Held::Nothing,
        _ => Held::Unknown,
    }
}

fn cell_json(c: &pb::Cell) -> Value {
    let mut map = Map::new();
    map.insert("timestamp".into(), c.timestamp.into());
    match &c.content {
        Some(pb::cell::Content::Value(v)) => {
            map.insert("tombstone".into(), false.into());
            bytes_json(&mut map, "value", v);
        }
        _ => {
            map.insert("tombstone".into(), true.into());
        }
    }
    map.insert("expires_at_ms".into(), c.expires_at_ms.into());
    Value::Object(map)
}

#[derive(Args)]
pub struct StatusArgs {
    /// Show effective ownership (replicas counted) for this keyspace [env: KV_KEYSPACE]
    #[arg(long, short = 'k', value_name = "NAME")]
    keyspace: Option<String>,
}

pub fn status(args: StatusArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args
        .keyspace
        .or_else(|| std::env::var("KV_KEYSPACE").ok().filter(|k| !k.is_empty()));
    let (ring, ks, warnings) = block_on(async {
        let client = target.connect().await?;
        let ring = client.describe_ring().await?;
        let ks = match &keyspace {
            Some(name) => Some(client.describe_keyspace(name).await?),
            None => None,
        };
        let warnings = repair_warnings(&ring).await;
        Ok((ring, ks, warnings))
    })?;
    let mut state = client::sdk::ring_state(&ring).context("the ring has a malformed token")?;
    if let Some(k) = &ks {
        state.keyspaces.insert(
            k.name.clone(),
            Keyspace::new(
                k.replication
                    .iter()
                    .map(|(dc, &rf)| (dc.clone(), rf as usize)),
            ),
        );
    }
    let topo = Ring::new(state).context("the ring does not validate")?;
    let owns = ownership(&topo, ks.as_ref().map(|k| k.name.as_str()))?;
    let mut dcs: BTreeMap<&str, Vec<&pb::RingNode>> = BTreeMap::new();
    for n in &ring.nodes {
        dcs.entry(n.dc.as_str()).or_default().push(n);
    }
    let code = |n: &pb::RingNode| {
        let live = match pb::Liveness::try_from(n.liveness) {
            Ok(pb::Liveness::Up) => 'U',
            Ok(pb::Liveness::Down) => 'D',
            _ => '?',
        };
        let st = match pb::NodeState::try_from(n.state) {
            Ok(pb::NodeState::Normal) => 'N',
            Ok(pb::NodeState::Joining) => 'J',
            Ok(pb::NodeState::Leaving) => 'L',
            Ok(pb::NodeState::Left) => 'X',
            _ => '?',
        };
        format!("{live}{st}")
    };
    match format {
        Format::Json => {
            let dcs: Vec<Value> = dcs
                .iter()
                .map(|(dc, nodes)| {
                    let nodes: Vec<Value> = nodes
                        .iter()
                        .map(|n| {
                            json!({
                                "status": code(n),
                                "liveness": pb::Liveness::try_from(n.liveness).map_or("UNKNOWN", |l| l.as_str_name()),
                                "state": pb::NodeState::try_from(n.state).map_or("UNKNOWN", |s| s.as_str_name()),
                                "address": n.client_address,
                                "load_bytes": n.load_bytes,
                                "tokens": n.tokens.len(),
                                "owns_percent": owns.get(n.id.as_str()).map(|s| s * 100.0),
                                "host_id": n.id,
                                "rack": n.rack,
                            })
                        })
                        .collect();
                    json!({"dc": dc, "nodes": nodes})
                })
                .collect();
            print_json(&json!({
                "ring_epoch": ring.ring_epoch,
                "keyspace": keyspace,
                "owns": if keyspace.is_some() { "effective" } else { "tokens" },
                "dcs": dcs,
                "repair_warnings": warnings.iter().map(|w| json!({
                    "node": w.node,
                    "keyspace": w.status.keyspace,
                    "ranges": w.status.ranges,
                    "ranges_overdue": w.status.ranges_overdue,
                    "oldest_repair_ms": w.status.oldest_repair_ms,
                    "gc_grace_ms": w.gc_grace_ms,
                })).collect::<Vec<_>>(),
            }));
        }
        Format::Text => {
            let owns_header = if keyspace.is_some() {
                "OWNS (EFFECTIVE)"
            } else {
                "OWNS"
            };
            for (i, (dc, nodes)) in dcs.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                println!("Datacenter: {dc}");
                println!("Status=Up/Down/?unknown  State=Normal/Joining/Leaving");
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            code(n),
                            n.client_address.clone(),
                            n.load_bytes.map_or_else(|| "-".to_owned(), human_bytes),
                            n.tokens.len().to_string(),
                            owns.get(n.id.as_str())
                                .map_or_else(|| "-".to_owned(), |s| percent(*s)),
                            n.id.clone(),
                            n.rack.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "--",
                            "ADDRESS",
                            "LOAD",
                            "TOKENS",
                            owns_header,
                            "HOST ID",
                            "RACK"
                        ],
                        &rows
                    )
                );
            }
            for w in &warnings {
                println!(
                    "\nWARNING: {}: keyspace {}: {} of {} ranges not repaired within the tombstone \
                     grace period ({}); run `kvctl repair -k {}` before deleted data can come back",
                    w.node,
                    w.status.keyspace,
                    w.status.ranges_overdue,
                    w.status.ranges,
                    human_ms(w.gc_grace_ms),
                    w.status.keyspace
                );
            }
        }
    }
    Ok(Outcome::Done)
}

/// A keyspace whose ranges on one node have gone unrepaired for longer than the grace period.
struct RepairWarning {
    node: String,
    gc_grace_ms: u64,
    status: pb::KeyspaceRepairStatus,
}

/// Asks every up node for its repair history; a node that does not answer (down, or too old
/// to know RepairStatus) is skipped: status must not fail for it.
async fn repair_warnings(ring: &pb::DescribeRingResponse) -> Vec<RepairWarning> {
    let calls = (ring.nodes.iter())
        .filter(|n| n.liveness == pb::Liveness::Up as i32)
        .map(|n| async move {
            let call = async {
                let mut c = pb::key_value_client::KeyValueClient::connect(format!(
                    "http://{}",
                    n.client_address
                ))
                .await
                .ok()?;
                c.repair_status(pb::RepairStatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            tokio::time::timeout(std::time::Duration::from_secs(2), call)
                .await
                .ok()
                .flatten()
        });
    let mut out = Vec::new();
    for r in futures_join(calls).await.into_iter().flatten() {
        for k in r.keyspaces {
            if k.ranges_overdue > 0 {
                out.push(RepairWarning {
                    node: r.node_id.clone(),
                    gc_grace_ms: r.gc_grace_ms,
                    status: k,
                });
            }
        }
    }
    out
}

/// Runs futures one after another: a handful of nodes, each bounded by its timeout.
async fn futures_join<F: std::future::Future>(calls: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await);
    }
    out
}

/// A duration for people, in its largest whole unit.
fn human_ms(ms: u64) -> String {
    const DAY: u64 = 24 * 3600 * 1000;
    match ms {
        m if m % DAY == 0 => format!("{}d", m / DAY),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m => format!("{}s", m / 1000),
    }
}

/// Each node's share of the ring: effective (replicas counted, a DC summing to its RF) for a
/// keyspace, else of the token ranges it is primary for (all nodes summing to 1).
fn ownership(ring: &Ring, keyspace: Option<&str>) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut owns = BTreeMap::new();
    match keyspace {
        Some(name) => {
            for dc in ring.placement(name)?.ownership() {
                for n in dc.nodes {
                    owns.insert(ring.node(n.node).id.0.clone(), n.share);
                }
            }
        }
        None => {
            for (i, &token) in ring.tokens().iter().enumerate() {
                if let Some(node) = ring.primary(token) {
                    *owns.entry(node.id.0.clone()).or_insert(0.0) += ring.range(i).share();
                }
            }
        }
    }
    Ok(owns)
}

/// Sizes as nodetool prints them: one decimal in the largest binary unit that fits.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod size_tests {
    use super::human_bytes;

    #[test]
    fn sizes_pick_the_largest_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
