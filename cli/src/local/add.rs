//! `kvctl local add`: a new node joins a running local cluster, the way `kv-node --join`
//! does on a real host: it learns the ring from the seeds, picks balanced tokens, streams its
//! ranges and only then serves them.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use super::state::{ClusterFile, NodeEntry};
use super::{probe, process};

/// Settings of the new node that must not be copied from its template node.
const NOT_COPIED: [&str; 7] = [
    "node_id",
    "data_dir",
    "rack",
    "initial_tokens",
    "listen",
    "replace",
    "join",
];

/// Adds a node to DC `dc` (e.g. `dc1`) on `rack` (default: the DC's least used rack),
/// joining or replacing the dead node `replace`, and waits until every running node sees it
/// NORMAL and UP.
pub async fn add(
    dir: &Path,
    dc: &str,
    rack: Option<&str>,
    replace: Option<&str>,
    kv_node: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<NodeEntry> {
    let mut cluster = ClusterFile::load(dir)?;
    let in_dc: Vec<&NodeEntry> = cluster.nodes.iter().filter(|n| n.dc == dc).collect();
    let Some(template) = in_dc.first().copied().or(cluster.nodes.first()) else {
        bail!("{} holds no nodes to join", dir.display());
    };
    let d: u8 = (dc.strip_prefix("dc").and_then(|n| n.parse().ok()))
        .with_context(|| format!("{dc:?} is not a local DC name like dc1"))?;
    let n = in_dc.len() + 1;
    if n > 254 {
        bail!("{dc} already has 254 nodes, all that fit on 127.0.{d}.N");
    }
    let rack = rack
        .map(str::to_owned)
        .unwrap_or_else(|| least_used_rack(&in_dc));
    let port: u16 = (template.client_address.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .context("cannot read the cluster's client port")?;
    let ip = Ipv4Addr::new(127, 0, d, n as u8);
    let entry = NodeEntry {
        id: format!("{dc}-n{n}"),
        dc: dc.to_owned(),
        rack,
        client_address: SocketAddr::from((ip, port)).to_string(),
        internode_address: SocketAddr::from((ip, port + 1)).to_string(),
        http_address: SocketAddr::from((ip, port + 2)).to_string(),
        dir: dir.join(format!("{dc}-n{n}")),
        pid: None,
    };
    process::check_ports_free([
        (entry.id.clone(), "client", entry.client_address.parse()?),
        (
            entry.id.clone(),
            "internode",
            entry.internode_address.parse()?,
        ),
        (entry.id.clone(), "http", entry.http_address.parse()?),
    ])?;
    fs::create_dir_all(entry.dir.join("data"))
        .with_context(|| format!("cannot create {}", entry.dir.display()))?;
    let config = joining_config(&template.config_path(), &entry, replace)?;
    fs::write(entry.config_path(), config)
        .with_context(|| format!("cannot write {}", entry.config_path().display()))?;
    let kv_node = process::find_kv_node(kv_node.or(Some(&cluster.kv_node)))?;
    let pid = process::spawn(&kv_node, &entry)?;
    cluster.nodes.push(NodeEntry {
        pid: Some(pid),
        ..entry.clone()
    });
    cluster.save(dir)?;
    let running: Vec<&NodeEntry> = (cluster.nodes.iter())
        .filter(|n| process::is_running(n) && Some(n.id.as_str()) != replace)
        .collect();
    let added = cluster.nodes.last().expect("just pushed");
    probe::wait_ready(&running, &running, timeout)
        .await
        .with_context(|| {
            format!(
                "{} did not finish joining; see {}",
                added.id,
                added.log_path().display()
            )
        })?;
    Ok(NodeEntry {
        pid: Some(pid),
        ..entry
    })
}

fn least_used_rack(in_dc: &[&NodeEntry]) -> String {
    let mut racks: Vec<(usize, &str)> = Vec::new();
    for n in in_dc {
        match racks.iter_mut().find(|(_, r)| *r == n.rack) {
            Some((count, _)) => *count += 1,
            None => racks.push((1, &n.rack)),
        }
    }
    racks.sort();
    racks
        .first()
        .map_or_else(|| "r1".to_owned(), |(_, r)| (*r).to_owned())
}

/// The template node's config with this node's identity and addresses, and `join = true`
/// (or `replace = DEAD`) in place of fixed tokens.
fn joining_config(
    template: &Path,
    entry: &NodeEntry,
    replace: Option<&str>,
) -> anyhow::Result<String> {
    let text = fs::read_to_string(template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    let mut config: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", template.display()))?;
    for key in NOT_COPIED {
        config.remove(key);
    }
    let data: PathBuf = entry.dir.join("data");
    config.insert("node_id".into(), entry.id.clone().into());
    config.insert("data_dir".into(), data.display().to_string().into());
    config.insert("rack".into(), entry.rack.clone().into());
    match replace {
        Some(dead) => config.insert("replace".into(), dead.into()),
        None => config.insert("join".into(), true.into()),
    };
    let mut listen = toml::Table::new();
    listen.insert("client".into(), entry.client_address.clone().into());
    listen.insert("internode".into(), entry.internode_address.clone().into());
    listen.insert("http".into(), entry.http_address.clone().into());
    config.insert("listen".into(), listen.into());
    let body = toml::to_string(&config).context("cannot write the node's config")?;
    Ok(format!(
        "# Written by `kvctl local add`: joins the running cluster.\n{body}"
    ))
}
