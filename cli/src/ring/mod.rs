//! `kvctl ring ...`: the token ring.

mod plan;
mod report;
mod spec;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct RingArgs {
    #[command(subcommand)]
    command: RingCommand,
}

#[derive(Subcommand)]
enum RingCommand {
    /// Lay out a cluster offline and show ownership, balance, availability cost and what a
    /// change (--add, --remove, --removenode, --replace) would move
    Plan(plan::PlanArgs),
}

pub fn run(args: RingArgs) -> anyhow::Result<()> {
    match args.command {
        RingCommand::Plan(args) => plan::run(args),
    }
}
