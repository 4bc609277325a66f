//! What a local cluster looks like before anything starts: names, loopback addresses, tokens and
//! each node's kv-node configuration.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use topology::layout::{layout, ClusterSpec, DcSpec};
use topology::{Allocator, Token};

use super::state::NodeEntry;

/// Tokens per node unless `--vnodes` says otherwise. The balanced allocator already spreads
/// ownership within a few percent at 16 tokens (Cassandra 4's default for the same reason),
/// and fewer tokens keep gossip, DescribeRing and every range walk small on a laptop.
pub const DEFAULT_VNODES: usize = 16;

/// Client port of every node unless `--port-base` says otherwise; internode and HTTP take the
/// next two. Every node has its own loopback address, so they all share these ports.
pub const DEFAULT_PORT_BASE: u16 = 9042;

/// Small memtables keep a cluster of many nodes on one machine within a few hundred MiB.
const MEMTABLE_BYTES: &str = "8MiB";
/// And a small block cache: at the node's default of 1 GiB, nine nodes whose data is read
/// could grow to 9 GiB. The bench scripts set the default back.
const BLOCK_CACHE_BYTES: &str = "64MiB";
/// No heap touched at start: it would hold 184 MiB per node from the first second (the node's
/// default for 8 MiB memtables), 1.7 GiB for nine nodes. The bench scripts turn it back on.
const MEMORY_PREFAULT_BYTES: &str = "0B";

/// Seeds per DC: two, so a DC still finds the cluster when its first node is down.
const SEEDS_PER_DC: usize = 2;

/// The shape of a local cluster, as `kvctl local up` takes it.
#[derive(Clone, Debug)]
pub struct LocalSpec {
    pub cluster_name: String,
    pub dcs: usize,
    pub nodes_per_dc: usize,
    pub racks: usize,
    pub vnodes: usize,
    pub port_base: u16,
    /// One-way delay to every remote DC, in ms.
    pub wan_latency_ms: Option<u64>,
}

/// One node of a planned cluster, with everything its config file needs.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub id: String,
    pub dc: String,
    pub rack: String,
    pub client: SocketAddr,
    pub internode: SocketAddr,
    pub http: SocketAddr,
    pub tokens: Vec<Token>,
}

impl PlannedNode {
    /// Every address the node will bind, named for error messages.
    pub fn listen_addresses(&self) -> [(&'static str, SocketAddr); 3] {
        [
            ("client", self.client),
            ("internode", self.internode),
            ("http", self.http),
        ]
    }

    pub fn entry(&self, dir: &Path) -> NodeEntry {
        NodeEntry {
            id: self.id.clone(),
            dc: self.dc.clone(),
            rack: self.rack.clone(),
            client_address: self.client.to_string(),
            internode_address: self.internode.to_string(),
            http_address: self.http.to_string(),
            dir: dir.join(&self.id),
            pid: None,
        }
    }
}

pub fn dc_name(d: usize) -> String {
    format!("dc{d}")
}

/// Plans the nodes of `spec`: DCs dc1..dcN, node n of DC d named `dcD-nN` on 127.0.D.N, dealt
/// to racks r1..rR in turn, with tokens from the balanced allocator tuned for each DC's
/// replication factor of up to 3.
pub fn plan(spec: &LocalSpec) -> anyhow::Result<Vec<PlannedNode>> {
    if spec.dcs == 0 || spec.nodes_per_dc == 0 {
        bail!("a cluster needs at least one DC and one node per DC");
    }
    // The DC and node numbers become the last two octets of the node's loopback address.
    if spec.dcs > 254 || spec.nodes_per_dc > 254 {
        bail!("at most 254 DCs and 254 nodes per DC fit on 127.0.D.N");
    }
    if spec.racks == 0 || spec.racks > spec.nodes_per_dc {
        bail!(
            "--racks {} must be from 1 to the nodes per DC ({})",
            spec.racks,
            spec.nodes_per_dc
        );
    }
    if spec.port_base == 0 || spec.port_base > u16::MAX - 2 {
        bail!("--port-base must leave room for three ports (1..=65533)");
    }
    let dcs: Vec<DcSpec> = (1..=spec.dcs)
        .map(|d| DcSpec::new(&dc_name(d), spec.racks, spec.nodes_per_dc))
        .collect();
    let cluster = ClusterSpec {
        replication: dcs
            .iter()
            .map(|dc| (dc.name.clone(), dc.nodes.min(3)))
            .collect(),
        dcs,
        vnodes: spec.vnodes,
        keyspace: "local".to_owned(),
    };
    // A fixed seed: the same command lays out the same ring, which makes logs comparable.
    let state = layout(&cluster, Allocator::Balanced, &mut StdRng::seed_from_u64(1))
        .context("cannot allocate tokens")?;
    // layout() deals nodes to racks exactly as described above, DC by DC, so its nodes line up
    // with ours; only the names differ.
    let mut planned = Vec::with_capacity(state.nodes.len());
    for (i, node) in state.nodes.into_iter().enumerate() {
        let d = i / spec.nodes_per_dc + 1;
        let n = i % spec.nodes_per_dc + 1;
        let ip = Ipv4Addr::new(127, 0, d as u8, n as u8);
        planned.push(PlannedNode {
            id: format!("dc{d}-n{n}"),
            dc: node.dc,
            rack: format!("r{}", (n - 1) % spec.racks + 1),
            client: SocketAddr::from((ip, spec.port_base)),
            internode: SocketAddr::from((ip, spec.port_base + 1)),
            http: SocketAddr::from((ip, spec.port_base + 2)),
            tokens: node.tokens,
        });
    }
    Ok(planned)
}

/// The first nodes of every DC, by internode address.
pub fn seeds(nodes: &[PlannedNode], nodes_per_dc: usize) -> Vec<String> {
    nodes
        .chunks(nodes_per_dc)
        .flat_map(|dc| dc.iter().take(SEEDS_PER_DC))
        .map(|n| n.internode.to_string())
        .collect()
}

/// The subset of kv-node's configuration (docs/configuration.md) a local node sets; the rest
/// keeps the node's defaults.
#[derive(Serialize)]
struct NodeToml<'a> {
    cluster_name: &'a str,
    node_id: &'a str,
    data_dir: PathBuf,
    dc: &'a str,
    rack: &'a str,
    seeds: &'a [String],
    vnodes: usize,
    initial_tokens: &'a [Token],
    worker_threads: usize,
    memory_prefault_bytes: &'static str,
    listen: ListenToml,
    engine: EngineToml,
    gossip: GossipToml,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    wan_latency_ms: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct ListenToml {
    client: String,
    internode: String,
    http: String,
}

#[derive(Serialize)]
struct EngineToml {
    memtable_bytes: &'static str,
    block_cache_bytes: &'static str,
}

/// Faster rounds and less tolerance than production: on one machine a stopped node should be
/// seen down in about 4 s rather than 11, so demos and tests do not wait on the detector.
#[derive(Serialize)]
struct GossipToml {
    interval_ms: u64,
    acceptable_pause_ms: u64,
}

const GOSSIP: GossipToml = GossipToml {
    interval_ms: 200,
    acceptable_pause_ms: 1_000,
};

/// Each node's share of this machine's cores, at least one. A thread per core in every node
/// made nodes wake each other's idle workers: with 3 nodes on 2 cores, one worker each cut
/// the nodes' CPU per YCSB-A operation by 12% and raised closed-loop throughput by 20%.
fn worker_threads(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / nodes.max(1)).max(1)
}

/// The node's config file, with `data_dir` absolute so the node may run from any directory.
pub fn node_toml(
    spec: &LocalSpec,
    node: &PlannedNode,
    seeds: &[String],
    node_dir: &Path,
) -> anyhow::Result<String> {
    let wan_latency_ms = match spec.wan_latency_ms {
        Some(ms) => (1..=spec.dcs)
            .map(dc_name)
            .filter(|dc| *dc != node.dc)
            .map(|dc| (dc, ms))
            .collect(),
        None => BTreeMap::new(),
    };
    let config = NodeToml {
        cluster_name: &spec.cluster_name,
        node_id: &node.id,
        data_dir: node_dir.join("data"),
        dc: &node.dc,
        rack: &node.rack,
        seeds,
        vnodes: node.tokens.len(),
        initial_tokens: &node.tokens,
        worker_threads: worker_threads(spec.dcs * spec.nodes_per_dc),
        memory_prefault_bytes: MEMORY_PREFAULT_BYTES,

        listen: ListenToml {
            client: node.client.to_string(),
            internode: node.internode.to_string(),
            http: node.http.to_string(),
        },
        engine: EngineToml {
            memtable_bytes: MEMTABLE_BYTES,
            block_cache_bytes: BLOCK_CACHE_BYTES,
        },
        gossip: GOSSIP,
        wan_latency_ms,
    };
    let body = toml::to_string(&config).context("cannot write the node's config")?;
    Ok(format!(
        "# Written by `kvctl local up`; fields are described in docs/configuration.md.\n{body}"
    ))
}

/// `section.key=value` from `--set`: the value as TOML, or as a string when it is not TOML.
pub fn parse_setting(text: &str) -> Result<(String, toml::Value), String> {
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE (e.g. hints.enabled=false)"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!(
            "{key:?} is not a setting name such as repair.enabled"
        ));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    Ok((key.to_owned(), value))
}

/// A node.toml with `settings` written over it; the node validates the result when it starts.
pub fn with_settings(config: &str, settings: &[(String, toml::Value)]) -> anyhow::Result<String> {
    if settings.is_empty() {
        return Ok(config.to_owned());
    }
    let mut root: toml::Table = toml::from_str(config).context("the generated config")?;
    for (key, value) in settings {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("split yields one part");
        let mut table = &mut root;
        for part in parts {
            let entry = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .with_context(|| format!("--set {key}: {part} is not a section"))?;
        }
        table.insert(last.to_owned(), value.clone());
    }
    let body = toml::to_string(&root).context("cannot write the node's config")?;
    Ok(format!(
        "# Written by `kvctl local up`; fields are described in docs/configuration.md.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dcs: usize, nodes: usize, racks: usize) -> LocalSpec {
        LocalSpec {
            cluster_name: "kv".into(),
            dcs,
            nodes_per_dc: nodes,
            racks,
            vnodes: DEFAULT_VNODES,
            port_base: 9042,
            wan_latency_ms: Some(40),
        }
    }

    #[test]
    fn settings_are_written_into_sections() {
        let base = "a = 1\n[hints]\nenabled = true\n";
        let set = [
            parse_setting("hints.enabled=false").unwrap(),
            parse_setting("repair.interval_ms=500").unwrap(),
            parse_setting("repair.tombstone_gc=grace").unwrap(),
        ];
        let out: toml::Value = toml::from_str(&with_settings(base, &set).unwrap()).unwrap();
        assert_eq!(out["hints"]["enabled"].as_bool(), Some(false));
        assert_eq!(out["repair"]["interval_ms"].as_integer(), Some(500));
        assert_eq!(out["repair"]["tombstone_gc"].as_str(), Some("grace"));
        assert!(parse_setting("nokey").is_err());
        assert!(parse_setting("a..b=1").is_err());
        assert!(with_settings(base, &[parse_setting("a.b=1").unwrap()]).is_err());
    }

    #[test]
    fn nodes_get_loopback_addresses_racks_and_their_own_tokens() {
        let nodes = plan(&spec(2, 3, 2)).unwrap();
        let names: Vec<(&str, &str, &str, String)> = nodes
            .iter()
            .map(|n| {
                (
                    n.id.as_str(),
                    n.dc.as_str(),
                    n.rack.as_str(),
                    n.client.to_string(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("dc1-n1", "dc1", "r1", "127.0.1.1:9042".to_owned()),
                ("dc1-n2", "dc1", "r2", "127.0.1.2:9042".to_owned()),
                ("dc1-n3", "dc1", "r1", "127.0.1.3:9042".to_owned()),
                ("dc2-n1", "dc2", "r1", "127.0.2.1:9042".to_owned()),
                ("dc2-n2", "dc2", "r2", "127.0.2.2:9042".to_owned()),
                ("dc2-n3", "dc2", "r1", "127.0.2.3:9042".to_owned()),
            ]
        );
        assert_eq!(nodes[4].internode.to_string(), "127.0.2.2:9043");
        assert_eq!(nodes[4].http.to_string(), "127.0.2.2:9044");
        let mut all: Vec<Token> = nodes.iter().flat_map(|n| n.tokens.clone()).collect();
        assert!(nodes.iter().all(|n| n.tokens.len() == DEFAULT_VNODES));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6 * DEFAULT_VNODES, "no token is shared");
    }

    #[test]
    fn seeds_are_the_first_two_nodes_of_each_dc() {
        let nodes = plan(&spec(2, 3, 1)).unwrap();
        assert_eq!(
            seeds(&nodes, 3),
            [
                "127.0.1.1:9043",
                "127.0.1.2:9043",
                "127.0.2.1:9043",
                "127.0.2.2:9043"
            ]
        );
        let single = plan(&spec(2, 1, 1)).unwrap();
        assert_eq!(seeds(&single, 1), ["127.0.1.1:9043", "127.0.2.1:9043"]);
    }

    #[test]
    fn config_names_every_remote_dc_and_all_tokens() {
        let s = spec(3, 1, 1);
        let nodes = plan(&s).unwrap();
        let seeds = seeds(&nodes, 1);
        let text = node_toml(&s, &nodes[1], &seeds, Path::new("/tmp/c/dc2-n1")).unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["node_id"].as_str(), Some("dc2-n1"));
        assert_eq!(value["cluster_name"].as_str(), Some("kv"));
        assert_eq!(value["data_dir"].as_str(), Some("/tmp/c/dc2-n1/data"));
        assert_eq!(value["listen"]["client"].as_str(), Some("127.0.2.1:9042"));
        assert_eq!(value["engine"]["memtable_bytes"].as_str(), Some("8MiB"));
        assert_eq!(value["engine"]["block_cache_bytes"].as_str(), Some("64MiB"));
        assert_eq!(value["memory_prefault_bytes"].as_str(), Some("0B"));
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as i64;
        let share = (cores / 3).max(1);
        assert_eq!(value["worker_threads"].as_integer(), Some(share));
        let wan = value["wan_latency_ms"].as_table().unwrap();
        assert_eq!(wan.keys().collect::<Vec<_>>(), ["dc1", "dc3"]);
        assert_eq!(wan["dc1"].as_integer(), Some(40));
        let tokens = value["initial_tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), DEFAULT_VNODES);
        assert_eq!(value["vnodes"].as_integer(), Some(DEFAULT_VNODES as i64));
        assert_eq!(
            tokens[0].as_str().unwrap().parse::<Token>().unwrap(),
            nodes[1].tokens[0]
        );
    }

    #[test]
    fn without_wan_latency_the_table_is_left_out() {
        let s = LocalSpec {
            wan_latency_ms: None,
            ..spec(2, 1, 1)
        };
        let nodes = plan(&s).unwrap();
        let text = node_toml(&s, &nodes[0], &[], Path::new("/x")).unwrap();
        assert!(!text.contains("wan_latency_ms"));
    }

    #[test]
    fn impossible_shapes_are_refused() {
        assert!(plan(&spec(0, 1, 1)).is_err());
        assert!(plan(&spec(1, 2, 3))
            .unwrap_err()
            .to_string()
            .contains("--racks"));
        assert!(plan(&spec(255, 1, 1)).is_err());
    }
}
