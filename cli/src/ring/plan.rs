//! `kvctl ring plan`: lay out a cluster offline, and plan a change to it.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use rand::{rngs::StdRng, SeedableRng};
use topology::layout::{layout, node_id};
use topology::{allocate_tokens, Allocator, Change, ChangePlan, NewNode, Node, NodeState, Ring};

use super::report::Report;
use super::spec::{self, Flags, PlanFile};
use crate::output::Format;

#[derive(Args)]
pub struct PlanArgs {
    /// A datacenter as NAME:RACKS:NODES, its nodes dealt to the racks in turn (repeatable)
    #[arg(long = "dc", value_name = "NAME:RACKS:NODES", value_parser = spec::parse_dc)]
    dcs: Vec<topology::layout::DcSpec>,
    /// Tokens per node [default: 256]
    #[arg(long)]
    vnodes: Option<usize>,
    /// Replicas per datacenter
    #[arg(long, value_name = "DC:RF,...", value_parser = spec::parse_rf)]
    rf: Option<std::collections::BTreeMap<String, usize>>,
    /// How tokens are chosen [default: balanced]
    #[arg(long, value_enum)]
    allocator: Option<AllocatorArg>,
    /// Seed of the random choices [default: 1]
    #[arg(long)]
    seed: Option<u64>,
    /// TOML file with the same settings (dc, vnodes, rf, allocator, seed); flags win
    #[arg(long, value_name = "FILE", conflicts_with = "dcs")]
    file: Option<PathBuf>,
    #[command(flatten)]
    what_if: WhatIf,
}

#[derive(Args)]
#[group(multiple = false)]
struct WhatIf {
    /// Plan adding a node to a rack
    #[arg(long, value_name = "DC:RACK")]
    add: Option<String>,
    /// Plan decommissioning a node: it streams its ranges away itself
    #[arg(long, value_name = "NODE")]
    remove: Option<String>,
    /// Plan removing a dead node: its ranges are rebuilt from the other replicas
    #[arg(long, value_name = "NODE")]
    removenode: Option<String>,
    /// Plan replacing a dead node by a new one that takes its tokens
    #[arg(long, value_name = "NODE")]
    replace: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum AllocatorArg {
    Random,
    Even,
    Balanced,
}

impl From<AllocatorArg> for Allocator {
    fn from(a: AllocatorArg) -> Allocator {
        match a {
            AllocatorArg::Random => Allocator::Random,
            AllocatorArg::Even => Allocator::Even,
            AllocatorArg::Balanced => Allocator::Balanced,
        }
    }
}

pub fn run(args: PlanArgs, format: Format) -> anyhow::Result<()> {
    let file = match &args.file {
        Some(path) => spec::read_file(path)?,
        None => PlanFile::default(),
    };
    let flags = Flags {
        dcs: args.dcs,
        vnodes: args.vnodes,
        rf: args.rf,
        allocator: args.allocator.map(Allocator::from),
        seed: args.seed,
    };
    let settings = spec::resolve(flags, file)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let state = layout(&settings.spec, settings.allocator, &mut rng)?;
    let ring = Ring::new(state)?;
    ring.check()?;
    let change = match what_if(&args.what_if, &ring, &settings, &mut rng)? {
        Some(change) => {
            let plan = ChangePlan::new(&ring, &change)?;
            plan.after()
                .check()
                .with_context(|| format!("cannot {change}"))?;
            Some((change, plan))
        }
        None => None,
    };
    let report = Report::new(&settings, &ring, change.as_ref())?;
    match format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn what_if(
    w: &WhatIf,
    ring: &Ring,
    settings: &spec::Settings,
    rng: &mut StdRng,
) -> anyhow::Result<Option<Change>> {
    let change = if let Some(target) = &w.add {
        join(ring, target, settings, rng)?
    } else if let Some(node) = &w.remove {
        Change::Decommission {
            node: known(ring, node)?.id.clone(),
        }
    } else if let Some(node) = &w.removenode {
        Change::RemoveNode {
            node: known(ring, node)?.id.clone(),
        }
    } else if let Some(node) = &w.replace {
        let dead = known(ring, node)?;
        Change::Replace {
            dead: dead.id.clone(),
            replacement: newcomer(ring, &dead.dc, &dead.rack),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(change))
}

fn join(
    ring: &Ring,
    target: &str,
    settings: &spec::Settings,
    rng: &mut StdRng,
) -> anyhow::Result<Change> {
    let (dc, rack) = target
        .split_once(':')
        .filter(|(dc, rack)| !dc.is_empty() && !rack.is_empty())
        .ok_or_else(|| anyhow!("--add {target:?} is not DC:RACK"))?;
    let rf = *settings.spec.replication.get(dc).ok_or_else(|| {
        let known: Vec<&str> = ring.datacenters().collect();
        anyhow!(
            "--add names datacenter {dc}, not one of {}",
            known.join(", ")
        )
    })?;
    let mut node = newcomer(ring, dc, rack);
    let request = NewNode {
        id: node.id.as_str(),
        dc,
        rack,
        vnodes: settings.spec.vnodes,
    };
    node.tokens = allocate_tokens(ring.state(), &request, rf, settings.allocator, rng)?;
    Ok(Change::Join { node })
}

/// A new node for `dc`, named after the DC's last node.
fn newcomer(ring: &Ring, dc: &str, rack: &str) -> Node {
    let count = ring.nodes().iter().filter(|n| n.dc == dc).count();
    let id = (count + 1..)
        .map(|n| node_id(dc, n))
        .find(|id| ring.find(id.as_str()).is_none())
        .expect("some number is free");
    Node {
        address: format!("{id}:7000"),
        id,
        dc: dc.to_owned(),
        rack: rack.to_owned(),
        state: NodeState::Joining,
        tokens: Vec::new(),
    }
}

fn known<'a>(ring: &'a Ring, id: &str) -> anyhow::Result<&'a Node> {
    let idx = ring.find(id).ok_or_else(|| {
        let example = ring.nodes().first().map_or("", |n| n.id.as_str());
        anyhow!("unknown node {id:?}; nodes are named DC-N, e.g. {example}")
    })?;
    Ok(ring.node(idx))
}
