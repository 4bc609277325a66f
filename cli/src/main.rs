//! kvctl: the operator's tool. Each group of subcommands lives in its own module and is
//! dispatched from here.

mod admin;
mod bench;
mod connect;
mod data;
mod demo;
mod errors;
mod local;
mod output;
mod repair;
mod ring;
mod topology_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::connect::Target;
use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Operate the key-value store",
    after_help = "Exit codes: 0 success, 1 key or keyspace not found (get), 2 any other error."
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    /// Output format
    #[arg(short, long, value_enum, global = true, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write one key
    Put(data::PutArgs),
    /// Read one key and print its value alone
    Get(data::GetArgs),
    /// Delete one key
    Del(data::DelArgs),
    /// Read several keys
    Mget(data::MgetArgs),
    /// Read the keys of a token range in token order
    Scan(data::ScanArgs),
    /// Apply the writes of a file in batches
    Batch(data::BatchArgs),
    /// Create, describe, list and drop keyspaces
    #[command(subcommand)]
    Keyspace(admin::KeyspaceCommand),
    /// Show a key's token, its replicas per DC and each replica's own cell
    Inspect(admin::InspectArgs),
    /// The nodes of the cluster per DC, like `nodetool status`
    Status(admin::StatusArgs),
    /// Compare replicas with Merkle trees and stream what differs (anti-entropy repair)
    Repair(repair::RepairArgs),
    /// The live ring (without a subcommand), or plan one offline (`ring plan`)
    Ring(ring::RingArgs),
    /// Make a node leave: it streams its ranges to their new owners, then stops
    Decommission(topology_cmd::DecommissionArgs),
    /// Remove a dead node for good: survivors re-replicate its ranges
    Removenode(topology_cmd::RemoveNodeArgs),
    /// Drop the data a node no longer replicates (after a join moved ranges away)
    Cleanup(topology_cmd::CleanupArgs),
    /// Streams of topology changes on each node, with progress
    Netstats(topology_cmd::NetstatsArgs),
    /// Drive the cluster (or a peer store) with a YCSB workload and report throughput and
    /// latency
    Bench(bench::BenchArgs),
    /// Run a cluster of kv-node processes on this machine (needs --dir)
    Local(local::LocalArgs),
    /// Start a 3-DC local cluster, show what consistency levels cost across DCs, and keep it
    /// running until Ctrl-C
    Demo(demo::DemoArgs),
}

/// How a command ended when it did not fail.
pub enum Outcome {
    Done,
    NotFound,
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`kvctl status | head`); Rust ignores SIGPIPE and would panic on the failed write.
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let format = cli.output;
    let target = cli.target;
    let result = match cli.command {
        Command::Ring(args) => ring::run(args, &target, format),
        Command::Put(args) => data::put(args, &target, format),
        Command::Get(args) => data::get(args, &target, format),
        Command::Del(args) => data::del(args, &target, format),
        Command::Mget(args) => data::mget(args, &target, format),
        Command::Scan(args) => data::scan(args, &target, format),
        Command::Batch(args) => data::batch(args, &target, format),
        Command::Keyspace(command) => admin::keyspace(command, &target, format),
        Command::Inspect(args) => admin::inspect(args, &target, format),
        Command::Status(args) => admin::status(args, &target, format),
        Command::Decommission(args) => topology_cmd::decommission(args, &target, format),
        Command::Removenode(args) => topology_cmd::removenode(args, &target, format),
        Command::Cleanup(args) => topology_cmd::cleanup(args, &target, format),
        Command::Netstats(args) => topology_cmd::netstats(args, &target, format),
        Command::Repair(args) => repair::run(args, &target, format),
        Command::Bench(args) => bench::run(args, &target, format),
        Command::Local(args) => local::run(args, target.dir(), format),
        Command::Demo(args) => demo::run(args, target.dir()),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(1),
        Err(e) => {
            // One line with the whole chain of causes, for people and for scripts alike.
            eprintln!("error: {}", errors::describe(&e));
            ExitCode::from(2)
        }
    }
}
