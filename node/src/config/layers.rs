//! The layers above the defaults: file, environment, flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{ConfigError, NodeConfig};

/// The kv-node flags that override configuration; the binary flattens them into its CLI.
/// Environment variables (`KV_NODE_*`) are read by [`NodeConfig::load`], not by clap, so that
/// tests can inject them and so the order file < environment < flags holds.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML configuration file [env: KV_NODE_CONFIG; default: built-in defaults]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's unique name in the cluster
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Directory for the node's data (engine, hints)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Datacenter of this node
    #[arg(long)]
    pub dc: Option<String>,
    /// Rack of this node within its datacenter
    #[arg(long)]
    pub rack: Option<String>,
    /// Client gRPC listen address
    #[arg(long, value_name = "ADDR")]
    pub listen_client: Option<SocketAddr>,
    /// Internode gRPC listen address
    #[arg(long, value_name = "ADDR")]
    pub listen_internode: Option<SocketAddr>,
    /// Metrics and health HTTP listen address
    #[arg(long, value_name = "ADDR")]
    pub listen_http: Option<SocketAddr>,
    /// Seed nodes' internode addresses, comma-separated ("" for none)
    #[arg(long, value_name = "HOST:PORT,...")]
    pub seeds: Option<String>,
    /// Number of tokens this node owns
    #[arg(long, value_name = "N")]
    pub vnodes: Option<usize>,
    /// Join a running cluster through the seeds (first start only)
    #[arg(long)]
    pub join: bool,
    /// Replace this dead node, taking over its tokens (first start only)
    #[arg(long, value_name = "NODE_ID")]
    pub replace: Option<String>,
}

/// The variable naming the config file when `--config` is absent.
pub const CONFIG_ENV_VAR: &str = "KV_NODE_CONFIG";

type Setter = fn(&mut NodeConfig, &str) -> Result<(), String>;

/// Environment variables, the field each overrides, and how its text is applied.
const ENV_VARS: [(&str, &str, Setter); 10] = [
    ("KV_NODE_NODE_ID", "node_id", |c, v| {
        c.node_id = v.to_owned();
        Ok(())
    }),
    ("KV_NODE_DATA_DIR", "data_dir", |c, v| {
        c.data_dir = v.into();
        Ok(())
    }),
    ("KV_NODE_DC", "dc", |c, v| {
        c.dc = v.to_owned();
        Ok(())
    }),
    ("KV_NODE_RACK", "rack", |c, v| {
        c.rack = v.to_owned();
        Ok(())
    }),
    ("KV_NODE_LISTEN_CLIENT", "listen.client", |c, v| {
        c.listen.client = parse_addr(v)?;
        Ok(())
    }),
    ("KV_NODE_LISTEN_INTERNODE", "listen.internode", |c, v| {
        c.listen.internode = parse_addr(v)?;
        Ok(())
    }),
    ("KV_NODE_LISTEN_HTTP", "listen.http", |c, v| {
        c.listen.http = parse_addr(v)?;
        Ok(())
    }),
    ("KV_NODE_SEEDS", "seeds", |c, v| {
        c.seeds = split_list(v);
        Ok(())
    }),
    ("KV_NODE_VNODES", "vnodes", |c, v| {
        c.vnodes = v.trim().parse().map_err(|_| "not a whole number")?;
        Ok(())
    }),
    (
        "KV_NODE_FORWARD_REMOTE_WRITES",
        "coordinator.forward_remote_writes",
        |c, v| {
            c.coordinator.forward_remote_writes =
                v.trim().parse().map_err(|_| "not true or false")?;
            Ok(())
        },
    ),
];

/// The `KV_NODE_*` variables and the field each overrides, for help text and docs.
pub fn env_vars() -> impl Iterator<Item = (&'static str, &'static str)> {
    ENV_VARS.iter().map(|&(var, field, _)| (var, field))
}

impl NodeConfig {
    /// Builds the configuration from every layer and validates it.
    pub fn load(
        args: &NodeArgs,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let file = args
            .config
            .clone()
            .or_else(|| env(CONFIG_ENV_VAR).map(PathBuf::from));
        let mut config = match file {
            Some(path) => NodeConfig::from_file(&path)?,
            None => NodeConfig::default(),
        };
        config.apply_env(env)?;
        args.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file over the defaults, without validating.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        NodeConfig::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML over the defaults, without validating.
    pub fn from_toml(text: &str) -> Result<NodeConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The effective configuration as TOML, for logging at start and `--print-config`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (var, field, set) in ENV_VARS {
            if let Some(value) = env(var) {
                set(self, &value).map_err(|reason| ConfigError::Env {
                    var,
                    field,
                    value,
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

impl NodeArgs {
    fn apply(&self, config: &mut NodeConfig) {
        replace(&mut config.node_id, &self.node_id);
        replace(&mut config.data_dir, &self.data_dir);
        replace(&mut config.dc, &self.dc);
        replace(&mut config.rack, &self.rack);
        replace(&mut config.listen.client, &self.listen_client);
        replace(&mut config.listen.internode, &self.listen_internode);
        replace(&mut config.listen.http, &self.listen_http);
        replace(&mut config.vnodes, &self.vnodes);
        config.join |= self.join;
        if self.replace.is_some() {
            config.replace = self.replace.clone();
        }
        if let Some(seeds) = &self.seeds {
            config.seeds = split_list(seeds);
        }
    }
}

fn replace<T: Clone>(slot: &mut T, flag: &Option<T>) {
    if let Some(value) = flag {
        *slot = value.clone();
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| "not an IP:port socket address".to_owned())
}

/// Empty items are dropped, so an empty string clears the list.
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
