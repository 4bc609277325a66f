//! How commands print their results.

use clap::ValueEnum;

/// Output format shared by every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for people
    Text,
    /// One JSON document for scripts
    Json,
}

/// A share (0..1) as a percentage with two decimals.
pub fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}
