//! kvctl: the operator's tool. Each group of subcommands lives in its own module and is
//! dispatched from here.

mod demo;
mod local;
mod output;
mod ring;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kvctl", version, about = "Operate the key-value store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan and inspect the token ring
    Ring(ring::RingArgs),
    /// Run a cluster of kv-node processes on this machine
    Local(local::LocalArgs),
    /// Start a 3-DC local cluster, show what consistency levels cost across DCs, and keep it
    /// running until Ctrl-C
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Ring(args) => ring::run(args),
        Command::Local(args) => local::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole chain of causes, for people and for scripts alike.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
