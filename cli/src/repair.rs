//! `kvctl repair`: Merkle-tree anti-entropy coordinated by one node, with a line per range
//! and a summary.

use anyhow::Context;
use clap::Args;
use client::pb::v1 as pb;
use client::pb::v1::key_value_client::KeyValueClient;
use serde_json::{json, Value};
use topology::{Token, TokenRange};

use crate::connect::{block_on, Target};
use crate::output::{print_json, Format};
use crate::Outcome;

#[derive(Args)]
pub struct RepairArgs {
    /// The keyspace to repair; every keyspace when absent
    #[arg(long, short = 'k', value_name = "NAME")]
    keyspace: Option<String>,
    /// Compare only the replicas in this DC (not counted as a complete repair for tombstone GC)
    #[arg(long, value_name = "DC")]
    dc: Option<String>,
    /// Only the tokens of (START, END], decimal; the whole ring when absent
    #[arg(long, value_name = "START:END", value_parser = parse_range)]
    range: Option<TokenRange>,
    /// Print only the summary, not a line per range
    #[arg(long)]
    quiet: bool,
}

fn parse_range(s: &str) -> Result<TokenRange, String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not START:END"))?;
    let token = |t: &str| {
        t.trim()
            .parse::<Token>()
            .map_err(|e: topology::ParseTokenError| e.to_string())
    };
    Ok(TokenRange::new(token(a)?, token(b)?))
}

fn range_text(r: &Option<pb::TokenRange>) -> String {
    r.as_ref()
        .and_then(|r| client::decode_token_range(r).ok())
        .map_or_else(|| "?".to_owned(), |r| r.to_string())
}

fn range_json(r: &pb::RangeRepaired) -> Value {
    let range = r
        .range
        .as_ref()
        .and_then(|x| client::decode_token_range(x).ok());
    json!({
        "keyspace": r.keyspace,
        "start": range.map(|r| r.start.to_string()),
        "end": range.map(|r| r.end.to_string()),
        "replicas": r.replicas.iter().map(|x| json!({
            "node_id": x.node_id,
            "root": format!("{:016x}", x.root),
            "error": (!x.error.is_empty()).then_some(&x.error),
        })).collect::<Vec<_>>(),
        "sub_ranges_differing": r.sub_ranges_differing,
        "cells_pulled": r.cells_pulled,
        "bytes_pulled": r.bytes_pulled,
        "cells_pushed": r.cells_pushed,
        "bytes_pushed": r.bytes_pushed,
        "complete": r.complete,
        "error": (!r.error.is_empty()).then_some(&r.error),
    })
}

pub fn run(args: RepairArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let request = pb::RepairRequest {
        keyspace: args.keyspace.unwrap_or_default(),
        dc: args.dc.unwrap_or_default(),
        range: args.range.map(client::encode_token_range),
    };
    let (ranges, summary) = block_on(async {
        let endpoint = target.endpoints()?.remove(0);
        let mut client = KeyValueClient::connect(format!("http://{endpoint}"))
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?
            .max_decoding_message_size(client::MAX_MESSAGE_BYTES);
        let mut stream = client
            .repair(request)
            .await
            .map_err(|s| client::KvError::from_status(&s))?
            .into_inner();
        let mut ranges = Vec::new();
        let mut summary = None;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| client::KvError::from_status(&s))?
        {
            match msg.event {
                Some(pb::repair_progress::Event::Range(r)) => {
                    if format == Format::Text && !args.quiet {
                        print_range(&r);
                    }
                    ranges.push(r);
                }
                Some(pb::repair_progress::Event::Summary(s)) => summary = Some(s),
                None => {}
            }
        }
        let summary = summary.context("the node ended the repair without a summary")?;
        Ok((ranges, summary))
    })?;
    match format {
        Format::Json => print_json(&json!({
            "ranges": ranges.iter().map(range_json).collect::<Vec<_>>(),
            "summary": {
                "ranges_compared": summary.ranges_compared,
                "ranges_differing": summary.ranges_differing,
                "ranges_failed": summary.ranges_failed,
                "sub_ranges_differing": summary.sub_ranges_differing,
                "cells_pulled": summary.cells_pulled,
                "bytes_pulled": summary.bytes_pulled,
                "cells_pushed": summary.cells_pushed,
                "bytes_pushed": summary.bytes_pushed,
                "duration_ms": summary.duration_ms,
            },
        })),
        Format::Text => println!(
            "repaired {} ranges in {} ms: {} differed ({} sub-ranges), {} failed; \
             pulled {} cells ({} B), pushed {} cells ({} B)",
            summary.ranges_compared,
            summary.duration_ms,
            summary.ranges_differing,
            summary.sub_ranges_differing,
            summary.ranges_failed,
            summary.cells_pulled,
            summary.bytes_pulled,
            summary.cells_pushed,
            summary.bytes_pushed
        ),
    }
    if summary.ranges_failed > 0 {
        anyhow::bail!("{} ranges could not be repaired", summary.ranges_failed);
    }
    Ok(Outcome::Done)
}

fn print_range(r: &pb::RangeRepaired) {
    let state = if !r.error.is_empty() {
        format!("FAILED: {}", r.error)
    } else if r.sub_ranges_differing == 0 {
        "in sync".to_owned()
    } else {
        format!(
            "{} sub-ranges differed; pulled {} cells, pushed {}",
            r.sub_ranges_differing, r.cells_pulled, r.cells_pushed
        )
    };
    println!("{} {}: {state}", r.keyspace, range_text(&r.range));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_start_colon_end() {
        let r = parse_range("10:20").unwrap();
        assert_eq!((r.start, r.end), (Token(10), Token(20)));
        assert!(parse_range("10").is_err());
        assert!(parse_range("a:1").is_err());
    }
}
