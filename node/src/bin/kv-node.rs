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
    node::memory::keep_freed_memory();
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
    prefault_memory(&config);
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

/// Touches the configured heap before serving, at most half of the memory available now: the
/// budget is the engine's at full, which a small machine may not have to spare.
fn prefault_memory(config: &NodeConfig) {
    let wanted = config.memory_prefault_bytes();
    let limit = node::memory::available_bytes()
        .map_or(usize::MAX, |b| usize::try_from(b / 2).unwrap_or(usize::MAX));
    if wanted > limit {
        tracing::warn!(
            wanted_mib = wanted >> 20,
            limit_mib = limit >> 20,
            "memory_prefault_bytes is more than half the memory available; touching half"
        );
    }
    let bytes = wanted.min(limit);
    if bytes > 0 {
        let took = node::memory::prefault(bytes);
        tracing::info!(
            mib = bytes >> 20,
            ms = took.as_millis() as u64,
            "heap touched at start"
        );
    }
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
