//! Topology commands: `decommission`, `removenode`, `cleanup` and `netstats`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use client::pb::v1 as pb;
use client::pb::v1::key_value_client::KeyValueClient;
use serde_json::json;

use crate::connect::{block_on, Target};
use crate::output::{print_json, table, Format};
use crate::Outcome;

#[derive(Args)]
pub struct DecommissionArgs {
    /// The node that leaves, by host id (e.g. dc1-n4)
    node: String,
}

#[derive(Args)]
pub struct RemoveNodeArgs {
    /// The dead node, by host id
    node: String,
}

#[derive(Args)]
pub struct CleanupArgs {
    /// The node to clean up [default: every node, one at a time]
    node: Option<String>,
}

#[derive(Args)]
pub struct NetstatsArgs {
    /// The node to ask [default: every node]
    node: Option<String>,
}

/// The client address of `node`, from the ring.
async fn address_of(target: &Target, node: &str) -> anyhow::Result<(String, Vec<String>)> {
    let client = target.connect().await?;
    let ring = client.describe_ring().await?;
    let all: Vec<String> = ring.nodes.iter().map(|n| n.id.clone()).collect();
    let found = ring.nodes.iter().find(|n| n.id == node);
    let address = found
        .map(|n| n.client_address.clone())
        .with_context(|| format!("no node {node:?} in the ring; it has {}", all.join(", ")))?;
    Ok((address, all))
}

/// The ring's nodes, or the one named.
async fn selected_nodes(target: &Target, node: Option<&str>) -> anyhow::Result<Vec<pb::RingNode>> {
    let ring = target.connect().await?.describe_ring().await?;
    let nodes: Vec<pb::RingNode> = (ring.nodes.into_iter())
        .filter(|n| node.is_none_or(|want| want == n.id))
        .collect();
    if nodes.is_empty() {
        anyhow::bail!("no node {:?} in the ring", node.unwrap_or_default());
    }
    Ok(nodes)
}

async fn direct(address: &str) -> anyhow::Result<KeyValueClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach {address}"))?;
    Ok(KeyValueClient::new(channel))
}

pub fn decommission(
    args: DecommissionArgs,
    target: &Target,
    format: Format,
) -> anyhow::Result<Outcome> {
    block_on(async {
        let (address, _) = address_of(target, &args.node).await?;
        eprintln!(
            "decommissioning {}: streaming its ranges to their new owners...",
            args.node
        );
        let mut client = direct(&address).await?;
        let response = client
            .decommission(pb::DecommissionRequest {
                node_id: args.node.clone(),
            })
            .await
            .map_err(|s| client::KvError::from_status(&s))
            .with_context(|| format!("decommission of {} refused or failed", args.node))?
            .into_inner();
        match format {
            Format::Json => print_json(&json!({
                "node": args.node, "left": true, "ranges": response.ranges, "cells": response.cells,
            })),
            Format::Text => println!(
                "{} left the cluster: {} ranges handed over, {} cells streamed; the process has stopped",
                args.node, response.ranges, response.cells
            ),
        }
        Ok(Outcome::Done)
    })
}

pub fn removenode(
    args: RemoveNodeArgs,
    target: &Target,
    format: Format,
) -> anyhow::Result<Outcome> {
    block_on(async {
        let client = target.connect().await?;
        let ring = client.describe_ring().await?;
        let coordinator = (ring.nodes.iter())
            .find(|n| n.id != args.node && n.liveness() == pb::Liveness::Up)
            .context("no live node to coordinate the removal")?;
        eprintln!(
            "removing {} through {}: re-replicating its ranges...",
            args.node, coordinator.id
        );
        let mut c = direct(&coordinator.client_address).await?;
        let r = c
            .remove_node(pb::RemoveNodeRequest {
                node_id: args.node.clone(),
            })
            .await
            .map_err(|s| client::KvError::from_status(&s))
            .with_context(|| format!("removenode {} refused or failed", args.node))?
            .into_inner();
        match format {
            Format::Json => print_json(
                &json!({"node": args.node, "removed": true, "ranges": r.ranges, "cells": r.cells}),
            ),
            Format::Text => println!(
                "{} removed: {} ranges re-replicated, {} cells streamed",
                args.node, r.ranges, r.cells
            ),
        }
        Ok(Outcome::Done)
    })
}

pub fn cleanup(args: CleanupArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    block_on(async {
        let nodes = selected_nodes(target, args.node.as_deref()).await?;
        let mut docs = Vec::new();
        for n in &nodes {
            let mut c = direct(&n.client_address).await?;
            let r = c
                .cleanup(pb::CleanupRequest {
                    node_id: n.id.clone(),
                })
                .await
                .map_err(|s| client::KvError::from_status(&s))
                .with_context(|| format!("cleanup of {} refused or failed", n.id))?
                .into_inner();
            if format == Format::Text {
                println!(
                    "{}: kept {} cells, removed {} it no longer replicates",
                    n.id, r.cells_kept, r.cells_removed
                );
            }
            docs.push(
                json!({"node": n.id, "cells_kept": r.cells_kept, "cells_removed": r.cells_removed}),
            );
        }
        if format == Format::Json {
            print_json(&json!({ "nodes": docs }));
        }
        Ok(Outcome::Done)
    })
}

pub fn netstats(args: NetstatsArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    block_on(async {
        let nodes = selected_nodes(target, args.node.as_deref()).await?;
        let mut rows = Vec::new();
        let mut docs = Vec::new();
        for n in &nodes {
            let stats = match direct(&n.client_address).await {
                Ok(mut c) => c
                    .netstats(pb::NetstatsRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner()),
                Err(_) => None,
            };
            let Some(stats) = stats else {
                rows.push(vec![
                    n.id.clone(),
                    "unreachable".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                docs.push(json!({"node": n.id, "reachable": false}));
                continue;
            };
            let state = pb::NodeState::try_from(stats.state)
                .map_or_else(|_| "UNKNOWN".to_owned(), crate::local::state_name);
            docs.push(json!({
                "node": n.id,
                "state": &state,
                "streams": stats.streams.iter().map(|s| json!({
                    "direction": s.direction, "peer": s.peer, "keyspace": s.keyspace,
                    "ranges": s.ranges, "ranges_done": s.ranges_done,
                    "cells": s.cells, "bytes": s.bytes, "done": s.done,
                })).collect::<Vec<_>>(),
            }));
            if stats.streams.is_empty() {
                rows.push(vec![
                    n.id.clone(),
                    state.clone(),
                    "-".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for s in &stats.streams {
                rows.push(vec![
                    n.id.clone(),
                    state.clone(),
                    format!("{} {}", s.direction, s.peer),
                    s.keyspace.clone(),
                    format!("{}/{}", s.ranges_done, s.ranges),
                    format!("{} cells, {} B", s.cells, s.bytes),
                    if s.done { "done" } else { "streaming" }.into(),
                ]);
            }
        }
        match format {
            Format::Json => print_json(&json!({ "nodes": docs })),
            Format::Text => print!(
                "{}",
                table(
                    &["NODE", "STATE", "STREAM", "KEYSPACE", "RANGES", "MOVED", "PROGRESS"],
                    &rows
                )
            ),
        }
        Ok(Outcome::Done)
    })
}
