//! Data commands: put, get, del, mget, scan, batch.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use client::pb::v1::{self as pb, ConsistencyLevel};
use client::WriteOptions;
use serde_json::{json, Map, Value};
use topology::{Token, TokenRange};

use crate::connect::{block_on, Target};
use crate::errors::kv_error_json;
use crate::output::{bytes_json, bytes_text, print_json, table, Format};
use crate::Outcome;

/// The protocol's limit of mutations per Batch; longer files go in several.
const BATCH_LIMIT: usize = 1000;

/// The keyspace and consistency level every data command takes.
#[derive(Args)]
pub struct DataOpts {
    /// Keyspace to use [env: KV_KEYSPACE]
    #[arg(long, short = 'k', value_name = "NAME")]
    keyspace: Option<String>,
    /// Consistency level: ANY (writes), ONE, TWO, THREE, QUORUM, LOCAL_ONE, LOCAL_QUORUM,
    /// EACH_QUORUM, ALL; any case
    #[arg(long, value_name = "LEVEL", default_value = "LOCAL_QUORUM", value_parser = parse_level)]
    cl: ConsistencyLevel,
}

impl DataOpts {
    fn keyspace(&self) -> anyhow::Result<String> {
        keyspace_or_env(self.keyspace.as_deref())
    }
}

/// `--keyspace`, else `KV_KEYSPACE`, else a clear refusal.
pub fn keyspace_or_env(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(name) = flag {
        return Ok(name.to_owned());
    }
    match std::env::var("KV_KEYSPACE") {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_owned()),
        _ => bail!("no keyspace given: pass --keyspace NAME or set KV_KEYSPACE"),
    }
}

pub fn parse_level(s: &str) -> Result<ConsistencyLevel, String> {
    s.parse()
        .map_err(|e: client::ParseConsistencyError| e.to_string())
}

/// `30s`, `500ms`, `1h`, `2d`, `1m`: a whole number and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 30s, 5m, 1h or 2d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?} needs a unit: a whole number and ms, s, m, h or d, e.g. 30s"
            ))
        }
    };
    if n == 0 {
        return Err("a time to live must be more than zero".to_owned());
    }
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Args)]
pub struct PutArgs {
    key: String,
    /// The value; `-` reads it from stdin
    value: String,
    /// Time to live, e.g. 500ms, 30s, 1h
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Hybrid-logical-clock timestamp (ms << 16); makes the write idempotent and retryable
    #[arg(long)]
    timestamp: Option<u64>,
    #[command(flatten)]
    opts: DataOpts,
}

pub fn put(args: PutArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args.opts.keyspace()?;
    let value = if args.value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the value from stdin")?;
        Bytes::from(buf)
    } else {
        Bytes::from(args.value)
    };
    let options = WriteOptions {
        consistency: args.opts.cl,
        ttl: args.ttl,
        timestamp: args.timestamp,
    };
    let timestamp = block_on(async {
        let client = target.connect().await?;
        Ok(client
            .put(&keyspace, args.key.clone(), value, options)
            .await?)
    })?;
    match format {
        Format::Text => println!("OK timestamp {timestamp}"),
        Format::Json => print_json(&json!({"key": args.key, "timestamp": timestamp})),
    }
    Ok(Outcome::Done)
}

#[derive(Args)]
pub struct GetArgs {
    key: String,
    #[command(flatten)]
    opts: DataOpts,
}

pub fn get(args: GetArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args.opts.keyspace()?;
    let value = block_on(async {
        let client = target.connect().await?;
        Ok(client
            .get(&keyspace, args.key.clone(), args.opts.cl)
            .await?)
    })?;
    if format == Format::Json {
        let mut map = Map::new();
        map.insert("key".into(), args.key.clone().into());
        map.insert("found".into(), value.is_some().into());
        if let Some(v) = &value {
            read_value_json(&mut map, v);
        }
        print_json(&Value::Object(map));
    }
    let Some(value) = value else {
        eprintln!("not found: key {:?} in keyspace {keyspace}", args.key);
        return Ok(Outcome::NotFound);
    };
    if format == Format::Text {
        // The value alone, as stored: scripts pipe it on.
        let mut out = std::io::stdout().lock();
        out.write_all(&value.value)?;
        if std::str::from_utf8(&value.value).is_ok() && !value.value.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(Outcome::Done)
}

fn read_value_json(map: &mut Map<String, Value>, v: &pb::ReadValue) {
    bytes_json(map, "value", &v.value);
    map.insert("timestamp".into(), v.timestamp.into());
    map.insert("expires_at_ms".into(), v.expires_at_ms.into());
}

#[derive(Args)]
pub struct DelArgs {
    key: String,
    /// Hybrid-logical-clock timestamp of the tombstone; makes the delete retryable
    #[arg(long)]
    timestamp: Option<u64>,
    #[command(flatten)]
    opts: DataOpts,
}

pub fn del(args: DelArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args.opts.keyspace()?;
    let options = WriteOptions {
        consistency: args.opts.cl,
        ttl: None,
        timestamp: args.timestamp,
    };
    let timestamp = block_on(async {
        let client = target.connect().await?;
        Ok(client.delete(&keyspace, args.key.clone(), options).await?)
    })?;
    match format {
        Format::Text => println!("OK timestamp {timestamp}"),
        Format::Json => print_json(&json!({"key": args.key, "timestamp": timestamp})),
    }
    Ok(Outcome::Done)
}

#[derive(Args)]
pub struct MgetArgs {
    /// Up to 1000 keys
    #[arg(required = true)]
    keys: Vec<String>,
    #[command(flatten)]
    opts: DataOpts,
}

pub fn mget(args: MgetArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args.opts.keyspace()?;
    let keys = args.keys.into_iter().map(Bytes::from).collect();
    let results = block_on(async {
        let client = target.connect().await?;
        Ok(client.multi_get(&keyspace, keys, args.opts.cl).await?)
    })?;
    match format {
        Format::Json => {
            let results: Vec<Value> = results
                .iter()
                .map(|(key, outcome)| {
                    let mut map = Map::new();
                    bytes_json(&mut map, "key", key);
                    match outcome {
                        Ok(value) => {
                            map.insert("found".into(), value.is_some().into());
                            if let Some(v) = value {
                                read_value_json(&mut map, v);
                            }
                        }
                        Err(e) => {
                            map.insert("error".into(), kv_error_json(e));
                        }
                    }
                    Value::Object(map)
                })
                .collect();
            print_json(&json!({ "results": results }));
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|(key, outcome)| {
                    let (value, timestamp) = match outcome {
                        Ok(Some(v)) => (bytes_text(&v.value), v.timestamp.to_string()),
                        Ok(None) => ("(not found)".to_owned(), "-".to_owned()),
                        Err(e) => (
                            format!("ERROR {}", crate::errors::kv_error(e)),
                            "-".to_owned(),
                        ),
                    };
                    vec![bytes_text(key), value, timestamp]
                })
                .collect();
            print!("{}", table(&["KEY", "VALUE", "TIMESTAMP"], &rows));
        }
    }
    Ok(Outcome::Done)
}

#[derive(Args)]
pub struct ScanArgs {
    /// Exclusive start token (decimal); with --end. Without both, the whole ring
    #[arg(long, requires = "end", value_parser = parse_token)]
    start: Option<Token>,
    /// Inclusive end token (decimal)
    #[arg(long, requires = "start", value_parser = parse_token)]
    end: Option<Token>,
    /// Stop after this many entries
    #[arg(long)]
    limit: Option<usize>,
    /// Entries per request, 1 to 10000
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    #[command(flatten)]
    opts: DataOpts,
}

fn parse_token(s: &str) -> Result<Token, String> {
    s.parse()
        .map_err(|e: topology::ParseTokenError| e.to_string())
}

pub fn scan(args: ScanArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args.opts.keyspace()?;
    let range = match (args.start, args.end) {
        (Some(start), Some(end)) => TokenRange::new(start, end),
        _ => TokenRange::new(Token::MIN, Token::MIN),
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let entries = block_on(async {
        let client = target.connect().await?;
        let mut scan = client.scan(&keyspace, range, args.opts.cl, args.page_size);
        let mut entries = Vec::new();
        while entries.len() < limit {
            let Some(page) = scan.next_page().await? else {
                break;
            };
            entries.extend(page);
        }
        entries.truncate(limit);
        Ok(entries)
    })?;
    let token = |e: &pb::ScanEntry| {
        client::decode_token(&e.token).map_or_else(|_| "?".to_owned(), |t| t.to_string())
    };
    match format {
        Format::Json => {
            let list: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let mut map = Map::new();
                    map.insert("token".into(), token(e).into());
                    bytes_json(&mut map, "key", &e.key);
                    if let Some(v) = &e.value {
                        read_value_json(&mut map, v);
                    }
                    Value::Object(map)
                })
                .collect();
            print_json(&json!({"count": list.len(), "entries": list}));
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let value = e
                        .value
                        .as_ref()
                        .map_or_else(String::new, |v| bytes_text(&v.value));
                    vec![token(e), bytes_text(&e.key), value]
                })
                .collect();
            print!("{}", table(&["TOKEN", "KEY", "VALUE"], &rows));
        }
    }
    Ok(Outcome::Done)
}

#[derive(Args)]
#[command(after_help = "\
FILE format, one write per line (blank lines and lines starting with # are skipped):
  put KEY VALUE        the value is the rest of the line after one space, spaces included
  del KEY
or JSON lines:
  {\"op\": \"put\", \"key\": \"k\", \"value\": \"v\", \"ttl\": \"30s\"}
  {\"op\": \"del\", \"key_base64\": \"AAE=\"}
  (key/value may be given as key_base64/value_base64 for binary data)
More than 1000 writes are sent as several batches, in order.")]
pub struct BatchArgs {
    /// The file of writes, or `-` for stdin
    file: PathBuf,
    /// Time to live of values without their own
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// One hybrid-logical-clock timestamp for every write; makes the batches retryable
    #[arg(long)]
    timestamp: Option<u64>,
    #[command(flatten)]
    opts: DataOpts,
}

pub fn batch(args: BatchArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    let keyspace = args.opts.keyspace()?;
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut mutations = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("cannot read the batch file")?;
        if let Some(m) = parse_mutation(&line).with_context(|| format!("line {}", n + 1))? {
            mutations.push(m);
        }
    }
    let options = WriteOptions {
        consistency: args.opts.cl,
        ttl: args.ttl,
        timestamp: args.timestamp,
    };
    let total = mutations.len();
    let (timestamps, failures) = block_on(async {
        let client = target.connect().await?;
        let mut timestamps = Vec::new();
        let mut failures = Vec::new();
        for (chunk, part) in mutations.chunks(BATCH_LIMIT).enumerate() {
            let outcome = client.batch(&keyspace, part.to_vec(), options).await?;
            timestamps.push(outcome.timestamp);
            failures.extend(
                outcome
                    .failures
                    .into_iter()
                    .map(|(i, e)| (chunk * BATCH_LIMIT + i as usize, e)),
            );
        }
        Ok((timestamps, failures))
    })?;
    match format {
        Format::Json => {
            let failures: Vec<Value> = failures
                .iter()
                .map(|(i, e)| json!({"index": i, "error": kv_error_json(e)}))
                .collect();
            print_json(
                &json!({"mutations": total, "timestamps": timestamps, "failures": failures}),
            );
        }
        Format::Text => {
            println!(
                "OK {} writes in {} batches, {} failed",
                total,
                timestamps.len(),
                failures.len()
            );
            for (i, e) in &failures {
                println!(
                    "  write {} (line order): {}",
                    i + 1,
                    crate::errors::kv_error(e)
                );
            }
        }
    }
    if failures.is_empty() {
        Ok(Outcome::Done)
    } else {
        Err(anyhow!(
            "{} of {total} writes missed their consistency level",
            failures.len()
        ))
    }
}

fn parse_mutation(line: &str) -> anyhow::Result<Option<pb::Mutation>> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    if trimmed.starts_with('{') {
        return parse_json_mutation(trimmed).map(Some);
    }
    let (op, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    match op {
        "put" => {
            let Some((key, value)) = rest.split_once(' ') else {
                bail!("expected `put KEY VALUE`");
            };
            Ok(Some(pb::Mutation::put(key.to_owned(), value.to_owned())))
        }
        "del" => {
            let key = rest.trim();
            if key.is_empty() || key.contains(' ') {
                bail!("expected `del KEY`");
            }
            Ok(Some(pb::Mutation::delete(key.to_owned())))
        }
        other => bail!("unknown operation {other:?}: expected put or del"),
    }
}

fn parse_json_mutation(line: &str) -> anyhow::Result<pb::Mutation> {
    let v: Value = serde_json::from_str(line).context("not a JSON object")?;
    let field = |name: &str| -> anyhow::Result<Option<Bytes>> {
        use base64::Engine;
        if let Some(s) = v.get(name).and_then(Value::as_str) {
            return Ok(Some(Bytes::from(s.to_owned())));
        }
        match v.get(format!("{name}_base64")).and_then(Value::as_str) {
            Some(s) => Ok(Some(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .with_context(|| format!("{name}_base64 is not base64"))?,
            ))),
            None => Ok(None),
        }
    };
    let key = field("key")?.ok_or_else(|| anyhow!("no key or key_base64"))?;
    let mut m = match v.get("op").and_then(Value::as_str) {
        Some("put") => pb::Mutation::put(
            key,
            field("value")?.ok_or_else(|| anyhow!("put without value or value_base64"))?,
        ),
        Some("del") => pb::Mutation::delete(key),
        _ => bail!("\"op\" must be \"put\" or \"del\""),
    };
    if let Some(ttl) = v.get("ttl").and_then(Value::as_str) {
        m.ttl_ms = Some(parse_duration(ttl).map_err(|e| anyhow!(e))?.as_millis() as u64);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "30", "s", "1.5s", "0s", "3w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_lines_and_json_lines() {
        let m = parse_mutation("put k hello world").unwrap().unwrap();
        assert_eq!(m, pb::Mutation::put("k", "hello world"));
        assert_eq!(
            parse_mutation("del k").unwrap().unwrap(),
            pb::Mutation::delete("k")
        );
        assert!(parse_mutation("  # note").unwrap().is_none());
        assert!(parse_mutation("put k").is_err());
        assert!(parse_mutation("upsert k v").is_err());
        let m = parse_mutation(r#"{"op":"put","key_base64":"AAE=","value":"v","ttl":"1s"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(&m.key[..], &[0, 1]);
        assert_eq!(m.ttl_ms, Some(1000));
    }
}
