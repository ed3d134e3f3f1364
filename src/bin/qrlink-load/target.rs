//! Where the load goes and where it comes from: loopback-only targets, the source address list,
//! and TCP connects bound to a chosen 127.0.0.x.
//!
//! One source address gives about 28,000 ephemeral ports (Linux's default 32768–60999), and a
//! socket bound before `connect` takes its port without knowing the destination, so spreading
//! clients over several 127.0.0.x addresses is what lets one box open tens of thousands of
//! sessions, and churn through them, without `EADDRNOTAVAIL`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use tokio::net::{TcpSocket, TcpStream};

/// Most source addresses accepted; far more than any local run needs.
const MAX_SOURCE_IPS: usize = 1024;

/// Resolves `url`'s host and port and refuses anything that is not loopback: this tool opens
/// thousands of connections per second and must never be pointed at someone else's server.
pub fn loopback_addr(url: &url::Url) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or_else(|| format!("{url} has no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{url} has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host} resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{url} resolves to {}: only loopback targets (127.0.0.0/8, ::1) are allowed",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// Parses `127.0.0.2-127.0.0.20`, `127.0.0.2,127.0.0.5` or a mix; loopback IPv4 only.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (parse_v4(a)?, parse_v4(b)?),
            None => {
                let ip = parse_v4(part)?;
                (ip, ip)
            }
        };
        let (first, last) = (u32::from(first), u32::from(last));
        if last < first {
            return Err(format!("{part}: the range is reversed"));
        }
        if (last - first) as usize >= MAX_SOURCE_IPS || ips.len() > MAX_SOURCE_IPS {
            return Err(format!("{part}: at most {MAX_SOURCE_IPS} source addresses"));
        }
        ips.extend((first..=last).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
    }
    if ips.is_empty() {
        return Err("no source address given".to_owned());
    }
    Ok(ips)
}

fn parse_v4(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address (127.0.0.0/8)"));
    }
    Ok(ip)
}

/// Opens a TCP connection to `target`, from `source` when given (bound before connecting).
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(target).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(target).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists_of_loopback_addresses_parse() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
    }

    #[test]
    fn non_loopback_sources_and_reversed_ranges_are_refused() {
        assert!(parse_source_ips("10.0.0.1").is_err());
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("").is_err());
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        let ok = url::Url::parse("ws://127.0.0.1:3000").unwrap();
        assert_eq!(loopback_addr(&ok).unwrap().port(), 3000);
        let far = url::Url::parse("ws://192.0.2.1:3000").unwrap();
        assert!(loopback_addr(&far).is_err());
    }
}
