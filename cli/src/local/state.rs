//! `DIR/cluster.json`: what `kvctl local` knows about a local cluster between invocations, and
//! what other tools (`kvctl --dir`, the test harness) read to find the nodes.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

pub const CLUSTER_FILE: &str = "cluster.json";
const LOCK_FILE: &str = ".cluster.lock";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub cluster_name: String,
    /// The kv-node binary the cluster was started with, so `local start` runs the same one.
    pub kv_node: PathBuf,
    pub nodes: Vec<NodeEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: String,
    pub dc: String,
    pub rack: String,
    pub client_address: String,
    pub internode_address: String,
    pub http_address: String,
    /// Holds node.toml, node.log and data/.
    pub dir: PathBuf,
    /// The process kvctl last started; null once kvctl stopped or killed it.
    pub pid: Option<u32>,
}

impl NodeEntry {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

impl ClusterFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CLUSTER_FILE)
    }

    pub fn exists(dir: &Path) -> bool {
        Self::path(dir).exists()
    }

    pub fn load(dir: &Path) -> anyhow::Result<ClusterFile> {
        let path = Self::path(dir);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a cluster made by `kvctl local up`?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", path.display()))
    }

    /// Writes through a temporary file and a rename, so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{CLUSTER_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)? + "\n";
        fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reloads the file, applies `change` and saves it, under an exclusive lock so that
    /// concurrent kvctl invocations (e.g. two `local start`) do not lose each other's pids.
    pub fn update(dir: &Path, change: impl FnOnce(&mut ClusterFile)) -> anyhow::Result<()> {
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        // SAFETY: flock(2) only takes a descriptor that `lock` keeps open for this whole call;
        // closing it when `lock` drops releases the lock.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot lock {}", lock_path.display()));
        }
        let mut file = ClusterFile::load(dir)?;
        change(&mut file);
        file.save(dir)
    }

    pub fn node(&self, id: &str) -> anyhow::Result<&NodeEntry> {
        let i = self.position(id)?;
        Ok(&self.nodes[i])
    }

    pub fn node_mut(&mut self, id: &str) -> anyhow::Result<&mut NodeEntry> {
        let i = self.position(id)?;
        Ok(&mut self.nodes[i])
    }

    fn position(&self, id: &str) -> anyhow::Result<usize> {
        self.nodes.iter().position(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            anyhow!(
                "no node {id:?} in this cluster; its nodes are {}",
                ids.join(", ")
            )
        })
    }
}
