//! `kvctl ring ...`: the token ring, live or planned.

mod plan;
mod report;
mod spec;

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use client::pb::v1 as pb;
use serde_json::json;

use crate::connect::{block_on, Target};
use crate::output::{print_json, table, Format};
use crate::Outcome;

#[derive(Args)]
pub struct RingArgs {
    #[command(subcommand)]
    command: Option<RingCommand>,
}

#[derive(Subcommand)]
enum RingCommand {
    /// Lay out a cluster offline and show ownership, balance, availability cost and what a
    /// change (--add, --remove, --removenode, --replace) would move
    Plan(plan::PlanArgs),
}

pub fn run(args: RingArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    match args.command {
        Some(RingCommand::Plan(args)) => plan::run(args, format).map(|()| Outcome::Done),
        None => live(target, format),
    }
}

/// Every token of the live ring in order, with its node.
fn live(target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let ring = block_on(async { Ok(target.connect().await?.describe_ring().await?) })?;
    let mut tokens: BTreeMap<u128, &pb::RingNode> = BTreeMap::new();
    for n in &ring.nodes {
        for t in &n.tokens {
            tokens.insert(client::decode_token(t)?.0, n);
        }
    }
    let state = |n: &pb::RingNode| {
        pb::NodeState::try_from(n.state).map_or("UNKNOWN", |s| {
            s.as_str_name().trim_start_matches("NODE_STATE_")
        })
    };
    let liveness = |n: &pb::RingNode| {
        pb::Liveness::try_from(n.liveness).map_or("UNKNOWN", |l| {
            l.as_str_name().trim_start_matches("LIVENESS_")
        })
    };
    match format {
        Format::Json => {
            let list: Vec<_> = tokens
                .iter()
                .map(|(t, n)| {
                    json!({"token": t.to_string(), "node": n.id, "dc": n.dc, "rack": n.rack,
                           "state": state(n), "liveness": liveness(n), "address": n.client_address})
                })
                .collect();
            print_json(&json!({"ring_epoch": ring.ring_epoch, "tokens": list}));
        }
        Format::Text => {
            println!("ring epoch {}, {} tokens", ring.ring_epoch, tokens.len());
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|(t, n)| {
                    vec![
                        t.to_string(),
                        n.id.clone(),
                        n.dc.clone(),
                        n.rack.clone(),
                        state(n).to_owned(),
                        liveness(n).to_owned(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["TOKEN", "NODE", "DC", "RACK", "STATE", "LIVENESS"], &rows)
            );
        }
    }
    Ok(Outcome::Done)
}
