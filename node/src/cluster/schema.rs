//! Keyspace definitions as a convergent replicated map: each name holds its newest definition
//! (or a drop marker), newest by a hybrid-logical-clock version. Merging two schemas keeps the
//! newer entry per name, so it is commutative, associative and idempotent, and concurrent
//! changes on different coordinators converge through gossip without a leader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Keyspace names become directory names and metric labels.
pub const KEYSPACE_NAME_BYTES_MAX: usize = 48;
/// A replication factor above this is a typo, not a deployment.
pub const REPLICATION_FACTOR_MAX: u32 = 32;

/// One keyspace's definition, or the marker that it was dropped (kept so a peer that missed
/// the drop cannot resurrect it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyspaceDef {
    /// The HLC timestamp of the change; it also names the keyspace's data directory, so a
    /// keyspace dropped and created again starts empty.
    pub version: u64,
    pub dropped: bool,
    /// DC name to replication factor.
    pub replication: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    keyspaces: BTreeMap<String, KeyspaceDef>,
}

/// Why a keyspace change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("keyspace {0:?} already exists")]
    Exists(String),
    #[error("keyspace {0:?} does not exist")]
    NotFound(String),
}

impl Schema {
    /// The newest change anywhere in the schema; equal versions on two nodes mean equal
    /// schemas once gossip has settled.
    pub fn version(&self) -> u64 {
        self.keyspaces
            .values()
            .map(|d| d.version)
            .max()
            .unwrap_or(0)
    }

    /// A live keyspace.
    pub fn get(&self, name: &str) -> Option<&KeyspaceDef> {
        self.keyspaces.get(name).filter(|d| !d.dropped)
    }

    /// Live keyspaces by name.
    pub fn live(&self) -> impl Iterator<Item = (&str, &KeyspaceDef)> {
        (self.keyspaces.iter())
            .filter(|(_, d)| !d.dropped)
            .map(|(n, d)| (n.as_str(), d))
    }

    /// Every entry, drop markers included.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &KeyspaceDef)> {
        self.keyspaces.iter().map(|(n, d)| (n.as_str(), d))
    }

    /// Creates `name` at `version`, which must be newer than anything in the schema.
    pub fn create(
        &mut self,
        name: &str,
        replication: BTreeMap<String, u32>,
        version: u64,
    ) -> Result<&KeyspaceDef, SchemaError> {
        validate_name(name)?;
        validate_replication(&replication)?;
        if self.get(name).is_some() {
            return Err(SchemaError::Exists(name.to_owned()));
        }
        debug_assert!(version > self.version(), "schema versions only grow");
        let def = KeyspaceDef {
            version,
            dropped: false,
            replication,
        };
        self.keyspaces.insert(name.to_owned(), def);
        Ok(&self.keyspaces[name])
    }

    /// Marks `name` dropped at `version`.
    pub fn drop_keyspace(&mut self, name: &str, version: u64) -> Result<(), SchemaError> {
        let def = (self.keyspaces.get_mut(name))
            .filter(|d| !d.dropped)
            .ok_or_else(|| SchemaError::NotFound(name.to_owned()))?;
        debug_assert!(version > def.version, "schema versions only grow");
        def.version = version;
        def.dropped = true;
        def.replication.clear();
        Ok(())
    }

    /// Takes every entry of `other` that is newer than ours; returns whether anything changed.
    /// Equal versions (two coordinators at the same HLC instant) are settled by comparing the
    /// definitions, so every node picks the same one.
    pub fn merge(&mut self, other: &Schema) -> bool {
        let mut changed = false;
        for (name, theirs) in &other.keyspaces {
            let newer = self.keyspaces.get(name).is_none_or(|mine| theirs > mine);
            if newer {
                self.keyspaces.insert(name.clone(), theirs.clone());
                changed = true;
            }
        }
        changed
    }

    /// Builds a schema from entries received over the wire, validating each.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (String, KeyspaceDef)>,
    ) -> Result<Schema, SchemaError> {
        let mut schema = Schema::default();
        for (name, def) in entries {
            validate_name(&name)?;
            if !def.dropped {
                validate_replication(&def.replication)?;
            }
            schema.merge(&Schema {
                keyspaces: [(name, def)].into(),
            });
        }
        Ok(schema)
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// 1 to 48 ASCII letters, digits and underscores, not starting with a digit.
pub fn validate_name(name: &str) -> Result<(), SchemaError> {
    if name.is_empty() || name.len() > KEYSPACE_NAME_BYTES_MAX {
        return Err(invalid(
            "name",
            format!(
                "{:?} must be 1 to {KEYSPACE_NAME_BYTES_MAX} characters",
                name
            ),
        ));
    }
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok_chars || name.as_bytes()[0].is_ascii_digit() {
        return Err(invalid(
            "name",
            format!("{name:?} must be ASCII letters, digits and '_', not starting with a digit"),
        ));
    }
    Ok(())
}

/// At least one DC, each named and with a factor of 1 to 32.
pub fn validate_replication(replication: &BTreeMap<String, u32>) -> Result<(), SchemaError> {
    if replication.is_empty() {
        return Err(invalid("replication", "names no datacenter"));
    }
    for (dc, &rf) in replication {
        let field = format!("replication[{dc}]");
        if dc.is_empty() || dc.len() > 64 {
            return Err(invalid(field, "a DC name must be 1 to 64 bytes"));
        }
        if rf == 0 || rf > REPLICATION_FACTOR_MAX {
            return Err(invalid(
                field,
                format!("factor {rf} is outside 1..={REPLICATION_FACTOR_MAX}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn repl(rf: u32) -> BTreeMap<String, u32> {
        [("dc1".to_owned(), rf)].into()
    }

    #[test]
    fn create_drop_and_recreate() {
        let mut s = Schema::default();
        s.create("app", repl(3), 10).unwrap();
        assert_eq!(
            s.create("app", repl(1), 11),
            Err(SchemaError::Exists("app".into()))
        );
        s.drop_keyspace("app", 12).unwrap();
        assert!(s.get("app").is_none());
        assert_eq!(s.version(), 12);
        assert_eq!(s.create("app", repl(1), 13).unwrap().replication, repl(1));
    }

    #[test]
    fn bad_names_and_factors_are_refused() {
        let mut s = Schema::default();
        for name in ["", "1abc", "a-b", &"x".repeat(49)] {
            assert!(matches!(
                s.create(name, repl(1), 1),
                Err(SchemaError::Invalid { .. })
            ));
        }
        assert!(matches!(
            s.create("a", repl(0), 1),
            Err(SchemaError::Invalid { field, .. }) if field == "replication[dc1]"
        ));
        assert!(s.create("a", BTreeMap::new(), 1).is_err());
    }

    #[test]
    fn a_drop_is_not_undone_by_an_older_definition() {
        let mut a = Schema::default();
        a.create("app", repl(3), 10).unwrap();
        let old = a.clone();
        a.drop_keyspace("app", 20).unwrap();
        assert!(!a.merge(&old));
        assert!(a.get("app").is_none());
    }

    fn arb_schema() -> impl Strategy<Value = Schema> {
        let def =
            (1u64..6, any::<bool>(), 1u32..4).prop_map(|(version, dropped, rf)| KeyspaceDef {
                version,
                dropped,
                replication: if dropped { BTreeMap::new() } else { repl(rf) },
            });
        proptest::collection::btree_map("[ab]", def, 0..3)
            .prop_map(|keyspaces| Schema { keyspaces })
    }

    proptest! {
        #[test]
        fn prop_merge_converges_in_any_order(a in arb_schema(), b in arb_schema(), c in arb_schema()) {
            let mut abc = a.clone();
            abc.merge(&b);
            abc.merge(&c);
            let mut cba = c.clone();
            cba.merge(&b);
            cba.merge(&a);
            prop_assert_eq!(&abc, &cba);
            let before = abc.clone();
            prop_assert!(!abc.merge(&before));
        }
    }
}
