//! The forms a seed may take. Parsing is syntax only: names are resolved when the node gossips,
//! not when it starts, so a seed whose name does not resolve yet does not stop the node.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// One entry of `seeds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seed {
    /// `10.0.0.1:7000` or `[fd00::1]:7000`.
    Addr(SocketAddr),
    /// `kv-1.example.com:7000`: every A and AAAA record of the name, at that port.
    Host { name: String, port: u16 },
    /// `_kv._tcp.example.com`: each SRV record gives a host (then looked up as above) and port.
    Srv { name: String },
}

impl Seed {
    /// Classifies `text`; the error says what is wrong with it, for the caller to name the field.
    pub fn parse(text: &str) -> Result<Seed, String> {
        let Some((host, port)) = text.rsplit_once(':') else {
            if is_srv_name(text) {
                check_dns_name(text)?;
                return Ok(Seed::Srv {
                    name: text.to_owned(),
                });
            }
            return Err("no port; only an SRV name such as _kv._tcp.example.com has none".into());
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        };
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6
                .parse::<Ipv6Addr>()
                .map(|ip| Seed::Addr(SocketAddr::new(ip.into(), port)))
                .map_err(|_| format!("{v6:?} is not an IPv6 address"));
        }
        if host.contains(':') {
            return Err("an IPv6 address needs brackets, as in [::1]:7000".into());
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Seed::Addr(SocketAddr::new(ip.into(), port)));
        }
        check_dns_name(host)?;
        if is_srv_name(host) {
            return Err(format!(
                "{host:?} is an SRV name, whose records give the ports: drop \":{port}\""
            ));
        }
        Ok(Seed::Host {
            name: host.to_owned(),
            port,
        })
    }
}

/// `_service._proto.domain`, as RFC 2782 names SRV records.
fn is_srv_name(text: &str) -> bool {
    let mut labels = text.split('.');
    let service = labels.next().unwrap_or("");
    let proto = labels.next().unwrap_or("");
    service.len() > 1 && service.starts_with('_') && matches!(proto, "_tcp" | "_udp")
}

/// RFC 1123 names, plus '_' (container runtimes name services with it and resolvers accept
/// it). A name whose last label is all digits is a mistyped IPv4 address.
fn check_dns_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if name.len() > 253 || numeric_tld || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is neither an IP address nor a DNS name"));
    }
    Ok(())
}
