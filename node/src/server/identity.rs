//! Who this node is across restarts: its id, its tokens and its last gossip generation, kept
//! in `<data_dir>/identity` (a [`super::statefile`] with magic `KVID`). Tokens chosen once
//! never change on restart, and each start takes a generation above the last, so peers always
//! prefer the restarted process's state.

use rand::Rng;
use serde::{Deserialize, Serialize};
use topology::Token;

use super::statefile::{self, StateFileError};
use crate::config::NodeConfig;

const MAGIC: [u8; 4] = *b"KVID";
const FILE: &str = "identity";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub tokens: Vec<Token>,
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    File(#[from] StateFileError),
    #[error("data directory {dir} belongs to node {stored:?}, not {configured:?}; point data_dir elsewhere or fix node_id")]
    WrongNode {
        dir: String,
        stored: String,
        configured: String,
    },
}

/// Reads the identity (or makes one from the configuration) and records this start's
/// generation before the node says anything to anyone.
pub fn load_or_create(
    config: &NodeConfig,
    now_ms: u64,
    rng: &mut impl Rng,
) -> Result<Identity, IdentityError> {
    let path = config.data_dir.join(FILE);
    let stored: Option<Identity> = statefile::read(&path, MAGIC)?;
    let now_s = now_ms / 1000;
    let identity = match stored {
        Some(i) if i.node_id != config.node_id => {
            return Err(IdentityError::WrongNode {
                dir: config.data_dir.display().to_string(),
                stored: i.node_id,
                configured: config.node_id.clone(),
            })
        }
        Some(i) => {
            if config
                .initial_tokens
                .as_ref()
                .is_some_and(|t| *t != i.tokens)
            {
                tracing::warn!("initial_tokens differ from the tokens this node already owns; keeping the owned ones");
            }
            Identity {
                generation: now_s.max(i.generation + 1),
                ..i
            }
        }
        None => Identity {
            node_id: config.node_id.clone(),
            tokens: initial_tokens(config, rng),
            generation: now_s.max(1),
        },
    };
    statefile::write(&path, MAGIC, &identity)?;
    Ok(identity)
}

/// Records the tokens a joining or replacing node chose.
pub fn save(config: &NodeConfig, identity: &Identity) -> Result<(), IdentityError> {
    Ok(statefile::write(
        &config.data_dir.join(FILE),
        MAGIC,
        identity,
    )?)
}

/// The configured tokens, or random ones: a node started on its own has no ring to balance
/// against (joining with a balanced allocation is the next step's work).
fn initial_tokens(config: &NodeConfig, rng: &mut impl Rng) -> Vec<Token> {
    if let Some(t) = &config.initial_tokens {
        return t.clone();
    }
    // A joining or replacing node chooses its tokens once it has learned the ring.
    if config.join || config.replace.is_some() {
        return Vec::new();
    }
    let mut tokens: Vec<Token> = (0..config.vnodes).map(|_| Token(rng.gen())).collect();
    tokens.sort();
    tokens.dedup();
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn tokens_stay_and_generations_grow_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            data_dir: dir.path().to_owned(),
            vnodes: 8,
            ..NodeConfig::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let first = load_or_create(&config, 5_000, &mut rng).unwrap();
        assert_eq!(first.tokens.len(), 8);
        let second = load_or_create(&config, 5_000, &mut rng).unwrap();
        assert_eq!(second.tokens, first.tokens);
        assert!(second.generation > first.generation);
        let other = NodeConfig {
            node_id: "someone-else".into(),
            ..config
        };
        let err = load_or_create(&other, 9_000, &mut rng).unwrap_err();
        assert!(err.to_string().contains("belongs to node"), "{err}");
    }
}
