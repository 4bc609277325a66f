use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::*;
use crate::config::NodeConfig;

const TTL: Duration = Duration::from_secs(30);

/// Answers from tables the test fills; a name missing from them fails to resolve.
#[derive(Default)]
struct FakeResolver {
    ips: Mutex<HashMap<String, Vec<IpAddr>>>,
    srv: Mutex<HashMap<String, Vec<SrvTarget>>>,
    lookups: AtomicUsize,
}

impl FakeResolver {
    fn with_ips(self, host: &str, ips: &[&str]) -> Self {
        self.set_ips(host, ips);
        self
    }

    fn set_ips(&self, host: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.ips.lock().insert(host.to_owned(), ips);
    }

    fn with_srv(self, name: &str, targets: &[(&str, u16)]) -> Self {
        let targets = (targets.iter())
            .map(|&(host, port)| SrvTarget {
                host: host.to_owned(),
                port,
            })
            .collect();
        self.srv.lock().insert(name.to_owned(), targets);
        self
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::Relaxed)
    }
}

fn answer<T: Clone>(
    table: &Mutex<HashMap<String, Vec<T>>>,
    name: &str,
) -> Result<Answer<T>, LookupError> {
    match table.lock().get(name) {
        Some(records) => Ok(Answer {
            records: records.clone(),
            ttl: TTL,
        }),
        None => Err(LookupError(format!("{name}: no such name"))),
    }
}

impl SeedResolver for FakeResolver {
    fn lookup_ip<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Answer<IpAddr>, LookupError>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(answer(&self.ips, host)))
    }

    fn lookup_srv<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Answer<SrvTarget>, LookupError>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(answer(&self.srv, name)))
    }
}

const OWN: &str = "127.0.9.9:7000";

fn seeds(list: &[&str], resolver: &Arc<FakeResolver>) -> SeedAddresses {
    let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    SeedAddresses::new(&list, OWN.parse().unwrap(), resolver.clone())
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = list.iter().map(|a| a.parse().unwrap()).collect();
    out.sort_unstable();
    out
}

#[tokio::test(start_paused = true)]
async fn names_resolve_to_every_address_and_again_once_the_ttl_passes() {
    let resolver = Arc::new(FakeResolver::default().with_ips("kv.test", &["127.0.9.2", "::1"]));
    let seeds = seeds(&["127.0.9.1:7000", "kv.test:7001"], &resolver);
    let expected = addrs(&["127.0.9.1:7000", "127.0.9.2:7001", "[::1]:7001"]);
    assert_eq!(seeds.addresses().await, Some(expected.clone()));
    assert_eq!(seeds.addresses().await, Some(expected), "from the cache");
    assert_eq!(
        resolver.lookups(),
        1,
        "one lookup while the records are fresh"
    );

    // The seed behind the name is replaced: found once its records expire, not before.
    resolver.set_ips("kv.test", &["127.0.9.3"]);
    tokio::time::advance(TTL - Duration::from_secs(1)).await;
    assert!(seeds
        .addresses()
        .await
        .unwrap()
        .contains(&"[::1]:7001".parse().unwrap()));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        seeds.addresses().await,
        Some(addrs(&["127.0.9.1:7000", "127.0.9.3:7001"]))
    );
    assert_eq!(resolver.lookups(), 2);
}

#[tokio::test(start_paused = true)]
async fn srv_records_give_hosts_and_ports() {
    let resolver = Arc::new(
        FakeResolver::default()
            .with_srv("_kv._tcp.test", &[("a.test.", 7100), ("b.test.", 7200)])
            .with_ips("a.test.", &["127.0.9.3"])
            .with_ips("b.test.", &["127.0.9.4", "127.0.9.5"]),
    );
    let seeds = seeds(&["_kv._tcp.test"], &resolver);
    assert_eq!(seeds.len(), 1);
    assert_eq!(
        seeds.addresses().await,
        Some(addrs(&[
            "127.0.9.3:7100",
            "127.0.9.4:7200",
            "127.0.9.5:7200"
        ]))
    );
    assert_eq!(resolver.lookups(), 3, "the SRV name, then each target");
}

#[tokio::test(start_paused = true)]
async fn this_nodes_own_address_is_never_a_seed() {
    let resolver = Arc::new(FakeResolver::default().with_ips("me.test", &["127.0.9.9"]));
    let seeds = seeds(&[OWN, "me.test:7000", "127.0.9.1:7000"], &resolver);
    assert_eq!(seeds.len(), 2, "the literal own address is dropped at once");
    assert_eq!(seeds.addresses().await, Some(addrs(&["127.0.9.1:7000"])));
}

/// A tracing writer into a shared buffer, to read the log lines a test caused.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_resolve_is_skipped_with_a_log_line_and_retried_later() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let resolver = Arc::new(FakeResolver::default().with_ips("up.test", &["127.0.9.2"]));
    let seeds = seeds(
        &["gone.test:7000", "up.test:7000", "_kv._tcp.gone.test"],
        &resolver,
    );
    assert_eq!(
        seeds.addresses().await,
        Some(addrs(&["127.0.9.2:7000"])),
        "the others are still used"
    );
    let text = log.text();
    assert!(
        text.contains("WARN") && text.contains("seed name did not resolve"),
        "{text}"
    );
    assert!(
        text.contains("gone.test: no such name") && text.contains("_kv._tcp.gone.test"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "one line per failed name: {text}");

    // Not asked again every round; asked again after the retry delay, and then found.
    seeds.addresses().await;
    assert_eq!(resolver.lookups(), 3);
    resolver.set_ips("gone.test", &["127.0.9.6"]);
    tokio::time::advance(RETRY_FAILED_AFTER).await;
    assert_eq!(
        seeds.addresses().await,
        Some(addrs(&["127.0.9.2:7000", "127.0.9.6:7000"]))
    );
}

/// Three free ports on 127.0.0.1, for one node's listeners.
fn free_listen() -> crate::config::Listen {
    let sockets: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addr = |i: usize| sockets[i].local_addr().unwrap();
    crate::config::Listen {
        client: addr(0),
        internode: addr(1),
        http: addr(2),
    }
}

fn node_config(id: &str, dir: &std::path::Path, seeds: Vec<String>) -> NodeConfig {
    let mut config = NodeConfig {
        node_id: id.into(),
        data_dir: dir.join(id),
        seeds,
        vnodes: 4,
        listen: free_listen(),
        ..NodeConfig::default()
    };
    config.gossip.interval_ms = 50;
    config.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_seed_is_a_name_joins_through_the_injected_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let a = node_config("a", dir.path(), Vec::new());
    let b = node_config(
        "b",
        dir.path(),
        vec![format!("seed-a.test:{}", a.listen.internode.port())],
    );
    let resolver = Arc::new(FakeResolver::default().with_ips("seed-a.test", &["127.0.0.1"]));
    let a = Node::start_with(a, resolver.clone()).await.unwrap();
    let b = Node::start_with(b, resolver.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(b.node.members.is_alive("a") && a.node.members.is_alive("b")) {
        assert!(
            Instant::now() < deadline,
            "a and b did not see each other alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resolver.lookups() >= 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
