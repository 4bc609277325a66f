//! What `kvctl ring plan` prints, as JSON or as tables.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use topology::{Allocator, Change, ChangePlan, NodeId, QuorumLoss, Ring, Stream, Token};

use super::spec::{Settings, KEYSPACE};
use crate::output::percent;

#[derive(Serialize)]
pub struct Report {
    keyspace: String,
    replication: BTreeMap<String, usize>,
    vnodes: usize,
    allocator: Allocator,
    seed: u64,
    epoch: u64,
    /// The ring as planned: after the change, if there is one.
    nodes: Vec<NodeRow>,
    dcs: BTreeMap<String, DcRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<ChangeRow>,
}

#[derive(Serialize)]
struct NodeRow {
    id: NodeId,
    address: String,
    dc: String,
    rack: String,
    tokens: usize,
    /// Effective ownership; null for a node the change removes.
    ownership_percent: Option<f64>,
    /// Only with a change; absent for the node it adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    ownership_percent_before: Option<f64>,
}

#[derive(Serialize)]
struct DcRow {
    nodes: usize,
    racks: usize,
    rf: usize,
    /// Max over min effective ownership (per token held) of the DC's nodes.
    imbalance: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    imbalance_before: Option<f64>,
    /// Share of the DC's data the change streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    moved_fraction: Option<f64>,
    /// What any two failed nodes of the DC cost; absent below two nodes.
    quorum_loss: Option<QuorumRow>,
}

#[derive(Serialize)]
struct QuorumRow {
    /// Share of node pairs whose failure loses QUORUM on some range.
    pairs: f64,
    /// Share of the data losing QUORUM, averaged over pairs and for the worst pair.
    mean_share: f64,
    max_share: f64,
}

impl From<QuorumLoss> for QuorumRow {
    fn from(q: QuorumLoss) -> Self {
        QuorumRow {
            pairs: q.pairs,
            mean_share: q.mean_share,
            max_share: q.max_share,
        }
    }
}

#[derive(Serialize)]
struct ChangeRow {
    description: String,
    change: Change,
    ranges: Vec<RangeRow>,
}

#[derive(Serialize)]
struct RangeRow {
    /// The range is (start, end].
    start: Token,
    end: Token,
    share: f64,
    streams: Vec<Stream>,
    released: Vec<NodeId>,
}

/// Effective ownership per node and the per-DC figures of one ring.
struct Figures {
    ownership: BTreeMap<NodeId, f64>,
    dcs: BTreeMap<String, DcRow>,
}

fn figures(ring: &Ring) -> anyhow::Result<Figures> {
    let placement = ring.placement(KEYSPACE)?;
    let mut ownership = BTreeMap::new();
    let mut dcs = BTreeMap::new();
    for dc in placement.ownership() {
        for o in &dc.nodes {
            ownership.insert(ring.node(o.node).id.clone(), o.share);
        }
        let row = DcRow {
            nodes: dc.nodes.len(),
            racks: ring.racks_in(&dc.dc).len(),
            rf: dc.rf,
            imbalance: dc.imbalance,
            imbalance_before: None,
            moved_fraction: None,
            quorum_loss: placement.quorum_loss(&dc.dc).map(QuorumRow::from),
        };
        dcs.insert(dc.dc, row);
    }
    Ok(Figures { ownership, dcs })
}

impl Report {
    pub fn new(
        settings: &Settings,
        before: &Ring,
        change: Option<&(Change, ChangePlan)>,
    ) -> anyhow::Result<Report> {
        let first = figures(before)?;
        let (ring, mut current) = match change {
            Some((_, plan)) => (plan.after(), figures(plan.after())?),
            None => (before, figures(before)?),
        };
        let mut nodes = node_rows(ring, &current.ownership);
        let mut change_row = None;
        if let Some((change, plan)) = change {
            add_before(&mut nodes, before, &first.ownership);
            let ks = plan.keyspace(KEYSPACE).expect("planned keyspace");
            for (dc, row) in current.dcs.iter_mut() {
                row.imbalance_before = first.dcs.get(dc).map(|d| d.imbalance);
                row.moved_fraction = ks.moved_fraction.get(dc).copied();
            }
            change_row = Some(ChangeRow {
                description: change.to_string(),
                change: change.clone(),
                ranges: ks
                    .transfers
                    .iter()
                    .map(|t| RangeRow {
                        start: t.range.start,
                        end: t.range.end,
                        share: t.range.share(),
                        streams: t.streams.clone(),
                        released: t.released.clone(),
                    })
                    .collect(),
            });
        }
        Ok(Report {
            keyspace: KEYSPACE.to_owned(),
            replication: settings.spec.replication.clone(),
            vnodes: settings.spec.vnodes,
            allocator: settings.allocator,
            seed: settings.seed,
            epoch: ring.epoch(),
            nodes,
            dcs: current.dcs,
            change: change_row,
        })
    }
}

fn node_rows(ring: &Ring, ownership: &BTreeMap<NodeId, f64>) -> Vec<NodeRow> {
    ring.nodes()
        .iter()
        .map(|n| NodeRow {
            id: n.id.clone(),
            address: n.address.clone(),
            dc: n.dc.clone(),
            rack: n.rack.clone(),
            tokens: n.tokens.len(),
            ownership_percent: ownership.get(&n.id).map(|s| s * 100.0),
            ownership_percent_before: None,
        })
        .collect()
}

fn add_before(rows: &mut [NodeRow], before: &Ring, ownership: &BTreeMap<NodeId, f64>) {
    for row in rows {
        if before.find(row.id.as_str()).is_some() {
            row.ownership_percent_before = ownership.get(&row.id).map(|s| s * 100.0);
        }
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let rf: Vec<String> = self
            .replication
            .iter()
            .map(|(dc, rf)| format!("{dc}:{rf}"))
            .collect();
        let _ = writeln!(
            out,
            "keyspace {}, replication {}; {} vnodes per node; {} allocator, seed {}; epoch {}\n",
            self.keyspace,
            rf.join(","),
            self.vnodes,
            self.allocator,
            self.seed,
            self.epoch
        );
        self.write_nodes(&mut out);
        self.write_dcs(&mut out);
        if let Some(change) = &self.change {
            self.write_change(&mut out, change);
        }
        out
    }

    fn write_nodes(&self, out: &mut String) {
        let with_before = self.change.is_some();
        let _ = write!(
            out,
            "{:<16} {:<12} {:<10} {:>6}",
            "NODE", "DC", "RACK", "TOKENS"
        );
        if with_before {
            let _ = write!(out, " {:>13}", "OWNS BEFORE");
        }
        let _ = writeln!(out, " {:>16}", "OWNS (EFFECTIVE)");
        let owns = |v: Option<f64>| v.map_or("-".to_owned(), |p| format!("{p:.2}%"));
        for n in &self.nodes {
            let _ = write!(
                out,
                "{:<16} {:<12} {:<10} {:>6}",
                n.id.as_str(),
                n.dc,
                n.rack,
                n.tokens
            );
            if with_before {
                let _ = write!(out, " {:>13}", owns(n.ownership_percent_before));
            }
            let _ = writeln!(out, " {:>16}", owns(n.ownership_percent));
        }
        out.push('\n');
    }

    fn write_dcs(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>5} {:>3} {:>9}   QUORUM LOST WHEN 2 NODES FAIL",
            "DC", "NODES", "RACKS", "RF", "IMBALANCE"
        );
        for (name, dc) in &self.dcs {
            let loss = dc.quorum_loss.as_ref().map_or("-".to_owned(), |q| {
                format!(
                    "{} of node pairs; data lost: {} worst pair, {} on average",
                    percent(q.pairs),
                    percent(q.max_share),
                    percent(q.mean_share)
                )
            });
            let _ = writeln!(
                out,
                "{:<12} {:>5} {:>5} {:>3} {:>9.4}   {loss}",
                name, dc.nodes, dc.racks, dc.rf, dc.imbalance
            );
        }
        out.push('\n');
    }

    fn write_change(&self, out: &mut String, change: &ChangeRow) {
        let _ = writeln!(out, "change: {}", change.description);
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>17} {:>16}",
            "DC", "MOVED", "IMBALANCE BEFORE", "IMBALANCE AFTER"
        );
        for (name, dc) in &self.dcs {
            let _ = writeln!(
                out,
                "{:<12} {:>8} {:>17.4} {:>16.4}",
                name,
                percent(dc.moved_fraction.unwrap_or(0.0)),
                dc.imbalance_before.unwrap_or(f64::NAN),
                dc.imbalance
            );
        }
        let _ = writeln!(out, "\nranges that change hands: {}", change.ranges.len());
        for r in &change.ranges {
            let streams: Vec<String> = r
                .streams
                .iter()
                .map(|s| {
                    let from = s
                        .source
                        .as_ref()
                        .map_or("(no live replica)", |n| n.as_str());
                    format!("{from} -> {}", s.target)
                })
                .collect();
            let released: Vec<&str> = r.released.iter().map(NodeId::as_str).collect();
            let _ = writeln!(
                out,
                "({}, {}] {:>9}  {}  released: {}",
                r.start,
                r.end,
                format!("{:.4}%", r.share * 100.0),
                streams.join(", "),
                if released.is_empty() {
                    "-".to_owned()
                } else {
                    released.join(", ")
                }
            );
        }
    }
}
