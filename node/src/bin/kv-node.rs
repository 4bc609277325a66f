//! kv-node: one storage node of the cluster. Configuration from a TOML file, `KV_NODE_*`
//! environment variables and flags (docs/configuration.md); stops gracefully on SIGTERM or
//! Ctrl-C.

use anyhow::Context;
use clap::Parser;
use node::config::{NodeArgs, NodeConfig};
use node::server::Node;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's purge delay: -1, never return freed memory to the OS, so the node's RSS stays at
/// its high-water mark (bounded by the caches, memtables and queues the config sizes), as a
/// JVM heap or Scylla's memory does. Its default (10 ms) made a busy node give back and fault
/// in again the buffers of every request (page faults 9% of a node's CPU under YCSB-A); 10 s
/// still faulted 59.5k pages per 40 s on 3 nodes, and on a VM whose free memory goes back to
/// the host each 2 MiB huge page faulted in costs milliseconds of zeroing on a request thread:
/// never purging halved the seconds with a 50 ms operation at half of peak (docs/benchmarks.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = -1;
/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (mimalloc.h). libmimalloc-sys's own
/// constants follow mimalloc 2's numbering, so the value is named here and used only after
/// `mi_version` confirms major version 3.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_version() -> std::ffi::c_int;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

fn keep_freed_memory_for_a_while() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both are plain functions of the linked mimalloc with C integer arguments; setting
    // an option is allowed at any time.
    unsafe {
        if mi_version() / 10_000 == 3 {
            mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "kv-node",
    version,
    about = "A storage node of the key-value store"
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory_for_a_while();
    let cli = Cli::parse();
    let config = NodeConfig::load(&cli.node, &|k| std::env::var(k).ok())?;
    if cli.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KV_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime
        .enable_all()
        .thread_name("kv-node")
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let running = Node::start(config).await?;
    tokio::select! {
        r = wait_for_stop_signal() => r?,
        _ = running.node.stop_requested() => tracing::info!("the node asked to stop"),
    }
    running.shutdown().await?;
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; tracing::info!("interrupt received") }
    }
    Ok(())
}
