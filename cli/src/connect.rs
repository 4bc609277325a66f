//! Which nodes a command talks to, and the SDK client it talks through.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use client::{Client, ClientOptions};
use serde::Deserialize;

/// The endpoint a command uses when nothing names one.
const DEFAULT_ENDPOINT: &str = "127.0.0.1:9042";

/// Where the cluster is: `--endpoints`, else `KV_ENDPOINTS`, else `--dir`'s cluster.json, else
/// 127.0.0.1:9042.
#[derive(Args)]
pub struct Target {
    /// Nodes' client addresses, host:port,... [env: KV_ENDPOINTS]
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    endpoints: Vec<String>,
    /// Directory of a local cluster: its nodes are read from DIR/cluster.json
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "endpoints")]
    dir: Option<PathBuf>,
    /// This client's DC, when it is not the DC of the node that answers first
    #[arg(long, global = true, value_name = "DC")]
    local_dc: Option<String>,
}

/// The part of cluster.json this tool reads; the file holds more, which is ignored.
#[derive(Deserialize)]
struct ClusterFile {
    nodes: Vec<ClusterNode>,
}

#[derive(Deserialize)]
struct ClusterNode {
    client_address: String,
}

impl Target {
    /// `--dir`, which `kvctl local` and `kvctl demo` also take.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        if !self.endpoints.is_empty() {
            return Ok(clean(self.endpoints.iter().map(String::as_str)));
        }
        // An explicit --dir wins over the environment: a flag typed now says more than a
        // variable set long ago.
        if let Some(dir) = &self.dir {
            return from_dir(dir);
        }
        if let Ok(list) = std::env::var("KV_ENDPOINTS") {
            let endpoints = clean(list.split(','));
            if !endpoints.is_empty() {
                return Ok(endpoints);
            }
        }
        Ok(vec![DEFAULT_ENDPOINT.to_owned()])
    }

    /// `--endpoints` (or `KV_ENDPOINTS`) when given, else `defaults`: for stores other than
    /// ours, whose addresses a cluster.json does not know.
    #[cfg(feature = "bench-peers")]
    pub fn endpoints_or(&self, defaults: &[&str]) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return clean(self.endpoints.iter().map(String::as_str));
        }
        match std::env::var("KV_ENDPOINTS") {
            Ok(list) if !clean(list.split(',')).is_empty() => clean(list.split(',')),
            _ => defaults.iter().map(|&e| e.to_owned()).collect(),
        }
    }

    /// Connects, learning the ring from the first endpoint that answers.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_with(|_| {}).await
    }

    /// [`Target::connect`] with options of the caller's choosing.
    pub async fn connect_with(
        &self,
        adjust: impl FnOnce(&mut ClientOptions),
    ) -> anyhow::Result<Client> {
        let mut options = ClientOptions::new(self.endpoints()?);
        options.local_dc.clone_from(&self.local_dc);
        adjust(&mut options);
        Ok(Client::connect(options).await?)
    }
}

fn clean<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    items
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn from_dir(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = dir.join("cluster.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let file: ClusterFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cluster description", path.display()))?;
    let endpoints = clean(file.nodes.iter().map(|n| n.client_address.as_str()));
    if endpoints.is_empty() {
        bail!("{} lists no node with a client_address", path.display());
    }
    Ok(endpoints)
}

/// Runs a command's async body on a small runtime: kvctl makes a handful of calls, so one
/// thread is plenty.
pub fn block_on<T>(
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(body)
}
