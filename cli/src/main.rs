//! kvctl: the operator's tool. Each group of subcommands lives in its own module and is
//! dispatched from here.

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
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Ring(args) => ring::run(args),
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
