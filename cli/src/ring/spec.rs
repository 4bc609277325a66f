//! The cluster a plan starts from: given by flags, or by a TOML file with the same
//! settings (flags win).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use topology::layout::{ClusterSpec, DcSpec};
use topology::{Allocator, DEFAULT_VNODES};

/// Seed of the random choices when none is given, so that plans are reproducible.
pub const DEFAULT_SEED: u64 = 1;
/// The keyspace a plan lays out.
pub const KEYSPACE: &str = "default";

/// Parses `NAME:RACKS:NODES`.
pub fn parse_dc(s: &str) -> Result<DcSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [name, racks, nodes] = parts[..] else {
        return Err(format!("{s:?} is not NAME:RACKS:NODES"));
    };
    let count = |what: &str, v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{what} in {s:?} must be a whole number, got {v:?}"))
    };
    if name.trim().is_empty() {
        return Err(format!("{s:?} has an empty DC name"));
    }
    Ok(DcSpec::new(
        name.trim(),
        count("RACKS", racks)?,
        count("NODES", nodes)?,
    ))
}

/// Parses `DC:RF[,DC:RF...]`.
pub fn parse_rf(s: &str) -> Result<BTreeMap<String, usize>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',') {
        let Some((dc, rf)) = item.split_once(':') else {
            return Err(format!("{item:?} is not DC:RF"));
        };
        let rf = rf.trim().parse::<usize>().map_err(|_| {
            format!("replication factor of {dc} must be a whole number, got {rf:?}")
        })?;
        if out.insert(dc.trim().to_owned(), rf).is_some() {
            return Err(format!("{dc} is given twice"));
        }
    }
    Ok(out)
}

/// `--file`: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    #[serde(default)]
    dc: Vec<DcEntry>,
    vnodes: Option<usize>,
    rf: Option<BTreeMap<String, usize>>,
    allocator: Option<Allocator>,
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DcEntry {
    name: String,
    racks: usize,
    nodes: usize,
}

pub fn read_file(path: &Path) -> anyhow::Result<PlanFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid plan file", path.display()))
}

/// What the flags say; `None` where they say nothing.
pub struct Flags {
    pub dcs: Vec<DcSpec>,
    pub vnodes: Option<usize>,
    pub rf: Option<BTreeMap<String, usize>>,
    pub allocator: Option<Allocator>,
    pub seed: Option<u64>,
}

/// The cluster to lay out and how.
#[derive(Debug)]
pub struct Settings {
    pub spec: ClusterSpec,
    pub allocator: Allocator,
    pub seed: u64,
}

pub fn resolve(flags: Flags, file: PlanFile) -> anyhow::Result<Settings> {
    let dcs = if flags.dcs.is_empty() {
        file.dc
            .into_iter()
            .map(|d| DcSpec::new(&d.name, d.racks, d.nodes))
            .collect()
    } else {
        flags.dcs
    };
    if dcs.is_empty() {
        bail!("no datacenter: give --dc NAME:RACKS:NODES (repeatable) or --file");
    }
    let Some(replication) = flags.rf.or(file.rf) else {
        bail!("no replication: give --rf DC:RF,... (e.g. --rf us-east:3,eu-west:3)");
    };
    check_replication(&dcs, &replication)?;
    Ok(Settings {
        spec: ClusterSpec {
            dcs,
            vnodes: flags.vnodes.or(file.vnodes).unwrap_or(DEFAULT_VNODES),
            keyspace: KEYSPACE.to_owned(),
            replication,
        },
        allocator: flags.allocator.or(file.allocator).unwrap_or_default(),
        seed: flags.seed.or(file.seed).unwrap_or(DEFAULT_SEED),
    })
}

fn check_replication(dcs: &[DcSpec], rf: &BTreeMap<String, usize>) -> anyhow::Result<()> {
    let names: Vec<&str> = dcs.iter().map(|d| d.name.as_str()).collect();
    if let Some(dc) = rf.keys().find(|dc| !names.contains(&dc.as_str())) {
        bail!(
            "--rf names datacenter {dc}, which no --dc describes (described: {})",
            names.join(", ")
        );
    }
    if let Some(dc) = names.iter().find(|dc| !rf.contains_key(**dc)) {
        bail!("datacenter {dc} has no replication factor in --rf");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dcs: Vec<DcSpec>, rf: Option<&str>) -> Flags {
        Flags {
            dcs,
            vnodes: None,
            rf: rf.map(|r| parse_rf(r).unwrap()),
            allocator: None,
            seed: None,
        }
    }

    #[test]
    fn dc_specs_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(
            parse_dc("us-east:3:12").unwrap(),
            DcSpec::new("us-east", 3, 12)
        );
        assert!(parse_dc("us-east:3")
            .unwrap_err()
            .contains("NAME:RACKS:NODES"));
        assert!(parse_dc("us-east:x:12").unwrap_err().contains("RACKS"));
        assert!(parse_dc(":3:12").unwrap_err().contains("empty DC name"));
    }

    #[test]
    fn replication_lists_parse_and_reject_repeats() {
        let rf = parse_rf("us-east:3, eu-west:2").unwrap();
        assert_eq!(rf["us-east"], 3);
        assert_eq!(rf["eu-west"], 2);
        assert!(parse_rf("a:3,a:2").unwrap_err().contains("twice"));
        assert!(parse_rf("a=3").unwrap_err().contains("DC:RF"));
    }

    #[test]
    fn a_file_gives_what_the_flags_leave_out() {
        let file: PlanFile = toml::from_str(
            r#"
            vnodes = 16
            allocator = "even"
            rf = { east = 3 }
            [[dc]]
            name = "east"
            racks = 3
            nodes = 6
            "#,
        )
        .unwrap();
        let mut f = flags(Vec::new(), None);
        f.vnodes = Some(32);
        let s = resolve(f, file).unwrap();
        assert_eq!(s.spec.dcs, vec![DcSpec::new("east", 3, 6)]);
        assert_eq!(
            (s.spec.vnodes, s.allocator, s.seed),
            (32, Allocator::Even, DEFAULT_SEED)
        );
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<PlanFile>("vnode = 3").is_err());
    }

    #[test]
    fn replication_must_match_the_datacenters() {
        let east = || vec![DcSpec::new("east", 1, 3)];
        let err = resolve(flags(east(), Some("west:3")), PlanFile::default()).unwrap_err();
        assert!(err.to_string().contains("west"), "{err}");
        let both = vec![DcSpec::new("east", 1, 3), DcSpec::new("west", 1, 3)];
        let err = resolve(flags(both, Some("east:3")), PlanFile::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "datacenter west has no replication factor in --rf"
        );
        let err = resolve(flags(east(), None), PlanFile::default()).unwrap_err();
        assert!(err.to_string().contains("--rf"));
        let err = resolve(flags(Vec::new(), None), PlanFile::default()).unwrap_err();
        assert!(err.to_string().contains("--dc"));
    }
}
