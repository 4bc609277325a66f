//! Consistency levels by name, as people type them (`--cl local_quorum`) and as the proto enum
//! spells them (`CONSISTENCY_LEVEL_LOCAL_QUORUM`).

use std::fmt;
use std::str::FromStr;

use crate::pb::v1::ConsistencyLevel;

const PROTO_PREFIX: &str = "CONSISTENCY_LEVEL_";

/// A string that names no consistency level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid consistency level {input:?}: expected one of ANY, ONE, TWO, THREE, QUORUM, \
     LOCAL_ONE, LOCAL_QUORUM, EACH_QUORUM, ALL"
)]
pub struct ParseConsistencyError {
    input: String,
}

impl ConsistencyLevel {
    /// Every real level, weakest first; `Unspecified` is not one.
    pub const LEVELS: [ConsistencyLevel; 9] = [
        ConsistencyLevel::Any,
        ConsistencyLevel::One,
        ConsistencyLevel::Two,
        ConsistencyLevel::Three,
        ConsistencyLevel::Quorum,
        ConsistencyLevel::LocalOne,
        ConsistencyLevel::LocalQuorum,
        ConsistencyLevel::EachQuorum,
        ConsistencyLevel::All,
    ];

    /// The short name: the proto name without its `CONSISTENCY_LEVEL_` prefix.
    pub fn name(self) -> &'static str {
        let full = self.as_str_name();
        full.strip_prefix(PROTO_PREFIX).unwrap_or(full)
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConsistencyLevel {
    type Err = ParseConsistencyError;

    /// Accepts the short or the proto name in any case, with `-` for `_`; refuses
    /// `UNSPECIFIED`, which is not a level.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase().replace('-', "_");
        let short = upper.strip_prefix(PROTO_PREFIX).unwrap_or(&upper);
        ConsistencyLevel::LEVELS
            .into_iter()
            .find(|level| level.name() == short)
            .ok_or_else(|| ParseConsistencyError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_agree_with_the_proto_enum() {
        for level in ConsistencyLevel::LEVELS {
            let short = level.to_string();
            assert_eq!(format!("{PROTO_PREFIX}{short}"), level.as_str_name());
            assert_eq!(short.parse::<ConsistencyLevel>(), Ok(level));
            assert_eq!(level.as_str_name().parse::<ConsistencyLevel>(), Ok(level));
            assert_eq!(
                short
                    .to_lowercase()
                    .replace('_', "-")
                    .parse::<ConsistencyLevel>(),
                Ok(level)
            );
        }
        assert_eq!(ConsistencyLevel::LocalQuorum.to_string(), "LOCAL_QUORUM");
    }

    #[test]
    fn unknown_and_unspecified_are_refused() {
        for bad in [
            "",
            "UNSPECIFIED",
            "CONSISTENCY_LEVEL_UNSPECIFIED",
            "FOUR",
            "local quorum",
        ] {
            let err = bad.parse::<ConsistencyLevel>().unwrap_err();
            assert!(err.to_string().contains("LOCAL_QUORUM"), "{err}");
        }
    }
}
