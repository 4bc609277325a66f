//! Checks of the whole configuration after every layer is applied, so that the error names the
//! field whichever layer set it.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use super::{ConfigError, NodeConfig, Seed};
use crate::lsm;

/// Names appear in replication specs (`dc1:3,dc2:3`), file names and metric labels.
const NAME_BYTES_MAX: usize = 64;
/// Tokens travel in gossip and the ring holds nodes x vnodes entries; 4x the default is plenty.
const VNODES_MAX: usize = 1024;
const WORKER_THREADS_MAX: usize = 1024;
const TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
const HLC_MAX_DRIFT_MS_MAX: u64 = 60 * 1000;
/// Below the engine's 10-day gc grace: a hint replayed after the tombstones it should lose to
/// were purged would bring deleted data back.
pub(super) const HINT_WINDOW_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// The phi detector treats gaps over 10 s as outages and does not learn from them, so the
/// rhythm must stay well below that.
const GOSSIP_INTERVAL_MS: RangeInclusive<u64> = 10..=5_000;
const PHI_THRESHOLD: RangeInclusive<f64> = 1.0..=16.0;
const ACCEPTABLE_PAUSE_MS_MAX: u64 = 60 * 1000;
const WAN_LATENCY_MS_MAX: u64 = 10 * 1000;
/// A pause of at least 10 ms keeps a tight test loop from starving requests; a day between
/// ranges is already too slow to finish a ring within the grace period.
const REPAIR_INTERVAL_MS: RangeInclusive<u64> = 10..=24 * 3600 * 1000;

type Checked = Result<(), ConfigError>;

impl NodeConfig {
    /// Refuses the first setting the node cannot run with, naming its field path.
    pub fn validate(&self) -> Checked {
        self.validate_identity()?;
        self.validate_listen()?;
        self.validate_seeds()?;
        self.validate_tokens()?;
        self.validate_engine()?;
        self.validate_coordinator()?;
        self.validate_hints()?;
        self.validate_gossip()?;
        self.validate_repair()?;
        self.validate_wan_latency()
    }

    fn validate_identity(&self) -> Checked {
        check_name("cluster_name", &self.cluster_name)?;
        check_name("node_id", &self.node_id)?;
        check_name("dc", &self.dc)?;
        check_name("rack", &self.rack)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        Ok(())
    }

    fn validate_listen(&self) -> Checked {
        let l = &self.listen;
        let named = [
            ("listen.client", l.client),
            ("listen.internode", l.internode),
            ("listen.http", l.http),
        ];
        for (i, &(a_name, a)) in named.iter().enumerate() {
            for &(b_name, b) in &named[i + 1..] {
                if clash(a, b) {
                    let reason = if a == b {
                        format!("{b} is also {a_name}")
                    } else {
                        format!("{b} shares port {} with {a_name} ({a})", b.port())
                    };
                    return Err(ConfigError::invalid(b_name, reason));
                }
            }
        }
        Ok(())
    }

    fn validate_seeds(&self) -> Checked {
        let mut seen = HashSet::new();
        for (i, seed) in self.seeds.iter().enumerate() {
            let field = format!("seeds[{i}]");
            Seed::parse(seed).map_err(|why| {
                ConfigError::invalid(&field, format!("{seed:?} is not host:port ({why})"))
            })?;
            if !seen.insert(seed.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("{seed:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Checked {
        check_range("vnodes", self.vnodes, 1..=VNODES_MAX)?;
        check_range(
            "worker_threads",
            self.worker_threads,
            0..=WORKER_THREADS_MAX,
        )?;
        if let Some(dead) = &self.replace {
            check_name("replace", dead)?;
            if *dead == self.node_id {
                return Err(ConfigError::invalid("replace", "names this node itself"));
            }
            if self.join || self.initial_tokens.is_some() {
                let reason = "takes the dead node's tokens; it excludes join and initial_tokens";
                return Err(ConfigError::invalid("replace", reason));
            }
        }
        if self.join && self.initial_tokens.is_some() {
            let reason = "a joining node chooses balanced tokens; remove initial_tokens or join";
            return Err(ConfigError::invalid("join", reason));
        }
        if self.join && self.seeds.is_empty() {
            return Err(ConfigError::invalid(
                "join",
                "needs seeds to learn the cluster from",
            ));
        }
        let Some(tokens) = &self.initial_tokens else {
            return Ok(());
        };
        if tokens.len() != self.vnodes {
            let reason = format!("{} tokens, but vnodes is {}", tokens.len(), self.vnodes);
            return Err(ConfigError::invalid("initial_tokens", reason));
        }
        let mut seen = HashSet::new();
        match tokens.iter().enumerate().find(|(_, t)| !seen.insert(**t)) {
            Some((i, t)) => Err(ConfigError::invalid(
                format!("initial_tokens[{i}]"),
                format!("{t} is listed twice"),
            )),
            None => Ok(()),
        }
    }

    /// The engine's own checks, reported under this file's field names.
    fn validate_engine(&self) -> Checked {
        self.engine_options().validate().map_err(|e| match e {
            lsm::Error::InvalidOption { name, reason } => {
                ConfigError::invalid(engine_field(name), reason)
            }
            other => ConfigError::invalid("engine", other.to_string()),
        })
    }

    fn validate_coordinator(&self) -> Checked {
        let c = &self.coordinator;
        check_range(
            "coordinator.write_timeout_ms",
            c.write_timeout_ms,
            1..=TIMEOUT_MS_MAX,
        )?;
        check_range(
            "coordinator.read_timeout_ms",
            c.read_timeout_ms,
            1..=TIMEOUT_MS_MAX,
        )?;
        check_range(
            "coordinator.hlc_max_drift_ms",
            c.hlc_max_drift_ms,
            1..=HLC_MAX_DRIFT_MS_MAX,
        )
    }

    fn validate_hints(&self) -> Checked {
        let h = &self.hints;
        check_range("hints.window_ms", h.window_ms, 1..=HINT_WINDOW_MS_MAX)?;
        if h.bytes_max_per_target.0 == 0 {
            return Err(ConfigError::invalid(
                "hints.bytes_max_per_target",
                "must be positive; set hints.enabled = false to store no hints",
            ));
        }
        Ok(())
    }

    fn validate_repair(&self) -> Checked {
        let r = &self.repair;
        check_range("repair.interval_ms", r.interval_ms, REPAIR_INTERVAL_MS)?;
        check_range(
            "repair.merkle_depth",
            r.merkle_depth,
            0..=crate::cluster::merkle::MAX_DEPTH,
        )?;
        if r.gc_grace_ms <= self.hints.window_ms {
            return Err(ConfigError::invalid(
                "repair.gc_grace_ms",
                format!(
                    "must exceed hints.window_ms ({}): a hint replayed after its tombstone was \
                     purged would bring deleted data back",
                    self.hints.window_ms
                ),
            ));
        }
        Ok(())
    }

    fn validate_gossip(&self) -> Checked {
        let g = &self.gossip;
        check_range("gossip.interval_ms", g.interval_ms, GOSSIP_INTERVAL_MS)?;
        check_range("gossip.phi_threshold", g.phi_threshold, PHI_THRESHOLD)?;
        check_range(
            "gossip.acceptable_pause_ms",
            g.acceptable_pause_ms,
            0..=ACCEPTABLE_PAUSE_MS_MAX,
        )
    }

    fn validate_wan_latency(&self) -> Checked {
        for (dc, &ms) in &self.wan_latency_ms {
            let field = format!("wan_latency_ms.{dc}");
            check_name(&field, dc)?;
            if *dc == self.dc {
                return Err(ConfigError::invalid(
                    field,
                    "is this node's own DC; latency is only added towards remote DCs",
                ));
            }
            check_range(&field, ms, 0..=WAN_LATENCY_MS_MAX)?;
        }
        Ok(())
    }
}

/// The engine names its options after `lsm::Options` fields; most match this file's.
fn engine_field(name: &str) -> String {
    match name {
        "compression" => "engine.compression.level".into(),
        other => format!("engine.{other}"),
    }
}

fn check_range<T: PartialOrd + Display>(
    field: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Checked {
    if range.contains(&value) {
        return Ok(());
    }
    let reason = format!("{value} is outside {}..={}", range.start(), range.end());
    Err(ConfigError::invalid(field, reason))
}

fn check_name(field: &str, name: &str) -> Checked {
    if name.is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        let reason = format!("{} bytes is above {NAME_BYTES_MAX}", name.len());
        return Err(ConfigError::invalid(field, reason));
    }
    match name.chars().find(|&c| !is_name_char(c)) {
        Some(c) => Err(ConfigError::invalid(
            field,
            format!("{name:?} contains {c:?}; use letters, digits, '-', '_' and '.'"),
        )),
        None => Ok(()),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Two listeners clash when they would bind the same port on a common address. Port 0 asks
/// the OS for a free port, so it never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
