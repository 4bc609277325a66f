//! Node processes: finding the kv-node binary, starting it detached, signalling it, and telling
//! whether it still runs.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::state::NodeEntry;

pub const KV_NODE_ENV: &str = "KV_NODE_BIN";
const KV_NODE: &str = "kv-node";

/// The kv-node binary: the flag (or `KV_NODE_BIN`, which clap folds into it), else the one
/// beside this kvctl, which is where `cargo build` puts both.
pub fn find_kv_node(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        if !path.is_file() {
            bail!(
                "kv-node binary {} (from --kv-node or {KV_NODE_ENV}) does not exist",
                path.display()
            );
        }
        return path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()));
    }
    let exe = std::env::current_exe().context("cannot locate the running kvctl")?;
    let beside = exe.with_file_name(KV_NODE);
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no kv-node binary beside {}: build it with `cargo build --release --workspace` \
         (or run scripts/demo.sh, which builds both), or name it with --kv-node PATH or {KV_NODE_ENV}",
        exe.display()
    )
}

/// Refuses to start when any address is taken, naming each one, before anything runs: a node
/// that fails to bind would only say so in its log.
pub fn check_ports_free<'a>(
    addresses: impl IntoIterator<Item = (String, &'static str, SocketAddr)> + 'a,
) -> anyhow::Result<()> {
    let busy: Vec<String> = addresses
        .into_iter()
        .filter_map(|(node, role, addr)| {
            TcpListener::bind(addr)
                .err()
                .map(|e| format!("{addr} ({role} of {node}): {e}"))
        })
        .collect();
    if !busy.is_empty() {
        bail!(
            "addresses in use:\n  {}\nstop whatever holds them, or choose other ports with --port-base",
            busy.join("\n  ")
        );
    }
    Ok(())
}

/// Starts the node in its own process group, so it outlives kvctl and a Ctrl-C in kvctl's
/// terminal does not reach it; stdout and stderr go to its log, appended across restarts.
pub fn spawn(kv_node: &Path, node: &NodeEntry) -> anyhow::Result<u32> {
    let log_path = node.log_path();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    writeln!(
        log,
        "==== kvctl local: starting {} at unix time {} ====",
        node.id,
        since_epoch.as_secs()
    )?;
    let child = Command::new(kv_node)
        .arg("--config")
        .arg(node.config_path())
        .current_dir(&node.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {} for {}", kv_node.display(), node.id))?;
    // Dropping the handle neither waits for nor kills the node; once kvctl exits, init reaps it.
    Ok(child.id())
}

/// Whether `pid` is this node's kv-node. The command line must name the node's config file,
/// so a recycled pid is not mistaken for the node. It reads empty for a zombie, and also for a
/// moment after spawn while the exec completes, so the process state tells the two apart.
pub fn is_running(node: &NodeEntry) -> bool {
    let Some(pid) = node.pid else { return false };
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    match state {
        None | Some("X") => return false,
        // The leader of a multi-threaded process turns zombie as soon as it exits, while its
        // other threads, which hold its sockets and files until the last one is gone, may
        // still be exiting (seen: a restart right after a kill found the ports still bound).
        Some("Z") => return threads(pid) > 1,
        Some(_) => {}
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let config = node.config_path();
    cmdline.is_empty()
        || cmdline
            .split(|&b| b == 0)
            .any(|arg| Path::new(OsStr::from_bytes(arg)) == config)
}

/// Threads of `pid` not yet gone, the leader counted even as a zombie.
fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

pub fn signal(node: &NodeEntry, signal: Signal) -> anyhow::Result<()> {
    let Some(pid) = node.pid.filter(|_| is_running(node)) else {
        return Ok(());
    };
    let signo = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) only reads its two integer arguments.
    if unsafe { libc::kill(pid, signo) } != 0 {
        let err = std::io::Error::last_os_error();
        // The node exited between the check and the signal: what the caller wanted anyway.
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("cannot signal {} (pid {pid})", node.id));
        }
    }
    Ok(())
}

/// Waits until none of `nodes` runs, or `timeout` passes; returns those still running.
pub async fn wait_exited<'a>(nodes: &[&'a NodeEntry], timeout: Duration) -> Vec<&'a NodeEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        let running: Vec<&NodeEntry> = nodes.iter().copied().filter(|n| is_running(n)).collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `lines` lines of the node's log, to show why it did not come up.
pub fn log_tail(node: &NodeEntry, lines: usize) -> String {
    match fs::read(node.log_path()) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", node.log_path().display()),
    }
}
