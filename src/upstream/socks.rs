//! The client side of a SOCKS proxy's `CONNECT`, as reqwest speaks it for `socks5://`,
//! `socks5h://`, `socks4://` and `socks4a://` proxy URLs: SOCKS5 (RFC 1928) with user name
//! and password (RFC 1929), SOCKS4 and its 4a extension (a user id, no password).
//!
//! In `socks5://` and `socks4://` the client resolves the target's name and sends an address;
//! in `socks5h://` and `socks4a://` it sends the name and the proxy resolves it. Every answer is
//! read to its exact length, so no byte of the tunnel is taken. Errors say what the proxy
//! answered, in words; none carries the user name or the password.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 1928 section 3: no authentication required.
const NO_AUTH: u8 = 0x00;
/// RFC 1928 section 3: user name and password (RFC 1929).
const USER_PASSWORD: u8 = 0x02;
/// RFC 1928 section 3: none of the offered methods is acceptable.
const NO_ACCEPTABLE: u8 = 0xff;
/// RFC 1928 section 4, and SOCKS4's `CD`: the `CONNECT` command.
const CONNECT: u8 = 0x01;
/// SOCKS4's answer `CD` granting the request.
const SOCKS4_GRANTED: u8 = 90;

/// Which SOCKS a proxy URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// SOCKS4 (`socks4://`, `socks4a://`): IPv4 addresses, or names with 4a.
    V4,
    /// SOCKS5 (`socks5://`, `socks5h://`).
    V5,
}

/// How to ask one SOCKS proxy for a tunnel.
pub(crate) struct Socks {
    version: Version,
    /// The proxy resolves the target's name (`socks5h`, `socks4a`); else the client does.
    remote_dns: bool,
    /// SOCKS5: user name and password; SOCKS4: the user id (and an empty password).
    credentials: Option<Credentials>,
}

/// Kept apart, with no `Debug`, so they cannot end up in a log line.
struct Credentials {
    user: Vec<u8>,
    password: Vec<u8>,
}

/// What the tunnel leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// An address (the client resolved the name, or the URL had an address).
    Addr(SocketAddr),
    /// A name for the proxy to resolve, and the port.
    Name(&'a str, u16),
}

impl Socks {
    /// The SOCKS proxy of a proxy URL with `scheme`, and its user info (`user:password@`);
    /// `Ok(None)` for a scheme that is not SOCKS. The error says why not, without the secret.
    pub fn from_url(scheme: &str, userinfo: Option<(&str, &str)>) -> Result<Option<Socks>, String> {
        let (version, remote_dns) = match scheme {
            "socks5" => (Version::V5, false),
            "socks5h" => (Version::V5, true),
            "socks4" => (Version::V4, false),
            "socks4a" => (Version::V4, true),
            _ => return Ok(None),
        };
        let credentials = match userinfo {
            None => None,
            Some((user, password)) => {
                match version {
                    // RFC 1929 section 2: one length byte each; a user name of at least one.
                    Version::V5 if user.is_empty() || user.len() > 255 => {
                        return Err(format!(
                            "{scheme}:// proxy: the user name must be 1 to 255 bytes"
                        ));
                    }
                    Version::V5 if password.len() > 255 => {
                        return Err(format!(
                            "{scheme}:// proxy: the password must be at most 255 bytes"
                        ));
                    }
                    Version::V4 if !password.is_empty() => {
                        return Err(format!(
                            "{scheme}:// proxy: SOCKS4 sends a user id but no password; \
                             use socks5:// or socks5h:// for a password"
                        ));
                    }
                    Version::V4 if user.contains('\0') => {
                        return Err(format!("{scheme}:// proxy: a NUL byte in the user id"));
                    }
                    _ => {}
                }
                Some(Credentials {
                    user: user.as_bytes().to_vec(),
                    password: password.as_bytes().to_vec(),
                })
            }
        };
        Ok(Some(Socks {
            version,
            remote_dns,
            credentials,
        }))
    }

    /// Whether a tunnel to `host` can be asked for at all (SOCKS4 carries IPv4 only).
    pub fn check_target(&self, host: &str) -> Result<(), String> {
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) if self.version == Version::V4 => Err(format!(
                "a SOCKS4 proxy cannot reach the IPv6 address {host}; use socks5:// or socks5h://"
            )),
            _ => Ok(()),
        }
    }

    /// What to ask the proxy for: an address literal as it is; a name as it is for the proxy
    /// to resolve, or resolved here (the resolver's first address; for SOCKS4 its first IPv4
    /// one).
    pub async fn target<'a>(&self, host: &'a str, port: u16) -> Result<Target<'a>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Target::Addr(SocketAddr::new(ip, port)));
        }
        if self.remote_dns {
            return Ok(Target::Name(host, port));
        }
        let mut addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let found = match self.version {
            Version::V5 => addrs.next(),
            Version::V4 => addrs.find(SocketAddr::is_ipv4),
        };
        found.map(Target::Addr).ok_or_else(|| match self.version {
            Version::V5 => format!("{host}: no address"),
            Version::V4 => format!("{host}: no IPv4 address, and SOCKS4 carries no other"),
        })
    }

    /// Asks the proxy at the other end of `stream` for a tunnel to `target`; on success the
    /// stream carries the tunnel.
    pub async fn connect<S>(&self, stream: &mut S, target: &Target<'_>) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match self.version {
            Version::V5 => self.connect_v5(stream, target).await,
            Version::V4 => self.connect_v4(stream, target).await,
        };
        result.map_err(|e| format!("SOCKS{}: {e}", self.number()))
    }

    fn number(&self) -> u8 {
        match self.version {
            Version::V4 => 4,
            Version::V5 => 5,
        }
    }

    async fn connect_v5<S>(&self, stream: &mut S, target: &Target<'_>) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // RFC 1928 section 3: the methods offered; with credentials, no authentication is
        // still offered (as curl does), for a proxy that wants none.
        let greeting: &[u8] = match self.credentials {
            Some(_) => &[5, 2, NO_AUTH, USER_PASSWORD],
            None => &[5, 1, NO_AUTH],
        };
        write(stream, greeting).await?;
        let [version, method] = read::<2, _>(stream).await?;
        if version != 5 {
            return Err(format!(
                "not a SOCKS5 proxy (it answered version {version})"
            ));
        }
        match (method, &self.credentials) {
            (NO_AUTH, _) => {}
            (USER_PASSWORD, Some(credentials)) => {
                // RFC 1929 section 2; the lengths were checked when the URL was read.
                let mut request =
                    Vec::with_capacity(3 + credentials.user.len() + credentials.password.len());
                request.push(1);
                request.push(credentials.user.len() as u8);
                request.extend_from_slice(&credentials.user);
                request.push(credentials.password.len() as u8);
                request.extend_from_slice(&credentials.password);
                write(stream, &request).await?;
                let [_, status] = read::<2, _>(stream).await?;
                if status != 0 {
                    return Err(format!(
                        "the proxy refused the user name and password (status {status})"
                    ));
                }
            }
            (NO_ACCEPTABLE, None) => {
                return Err("the proxy wants credentials (user:password@ in the proxy URL)".into());
            }
            (NO_ACCEPTABLE, Some(_)) => {
                return Err("the proxy accepts neither no authentication nor a password".into());
            }
            (other, _) => return Err(format!("the proxy chose method {other}, not offered")),
        }
        // RFC 1928 section 4.
        let mut request = vec![5, CONNECT, 0];
        let port = match *target {
            Target::Addr(SocketAddr::V4(a)) => {
                request.push(1);
                request.extend_from_slice(&a.ip().octets());
                a.port()
            }
            Target::Addr(SocketAddr::V6(a)) => {
                request.push(4);
                request.extend_from_slice(&a.ip().octets());
                a.port()
            }
            Target::Name(name, port) => {
                let len = u8::try_from(name.len())
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("the host name must be 1 to 255 bytes")?;
                request.push(3);
                request.push(len);
                request.extend_from_slice(name.as_bytes());
                port
            }
        };
        request.extend_from_slice(&port.to_be_bytes());
        write(stream, &request).await?;
        let [version, reply, _, address_type] = read::<4, _>(stream).await?;
        if version != 5 {
            return Err(format!(
                "not a SOCKS5 proxy (it answered version {version})"
            ));
        }
        if reply != 0 {
            return Err(format!(
                "the proxy answered {} ({reply})",
                socks5_reply(reply)
            ));
        }
        // The bound address and port, read to their end and dropped.
        let address_len = match address_type {
            1 => 4,
            4 => 16,
            3 => usize::from(read::<1, _>(stream).await?[0]),
            other => return Err(format!("bad address type {other} in the answer")),
        };
        let mut rest = [0u8; 255 + 2];
        read_into(stream, &mut rest[..address_len + 2]).await
    }

    async fn connect_v4<S>(&self, stream: &mut S, target: &Target<'_>) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let user = self.credentials.as_ref().map_or(&[][..], |c| &c.user[..]);
        let (ip, port, name) = match *target {
            Target::Addr(SocketAddr::V4(a)) => (*a.ip(), a.port(), None),
            Target::Addr(SocketAddr::V6(a)) => {
                return Err(format!("cannot reach the IPv6 address {}", a.ip()));
            }
            Target::Name(name, port) => {
                if name.contains('\0') {
                    return Err("a NUL byte in the host name".into());
                }
                // SOCKS4a: an address 0.0.0.x with x not zero says a name follows.
                (Ipv4Addr::new(0, 0, 0, 1), port, Some(name))
            }
        };
        let mut request = vec![4, CONNECT];
        request.extend_from_slice(&port.to_be_bytes());
        request.extend_from_slice(&ip.octets());
        request.extend_from_slice(user);
        request.push(0);
        if let Some(name) = name {
            request.extend_from_slice(name.as_bytes());
            request.push(0);
        }
        write(stream, &request).await?;
        let [version, code, ..] = read::<8, _>(stream).await?;
        if version != 0 {
            return Err(format!(
                "not a SOCKS4 proxy (it answered version {version})"
            ));
        }
        match code {
            SOCKS4_GRANTED => Ok(()),
            91 => Err("the proxy rejected the request or could not connect (91)".into()),
            92 => Err("the proxy could not reach the client's identd (92)".into()),
            93 => Err("the client's identd reported another user id (93)".into()),
            other => Err(format!("the proxy answered the unknown code {other}")),
        }
    }
}

/// RFC 1928 section 6's reply field, in words.
fn socks5_reply(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "an unassigned reply code",
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), String> {
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

async fn read<const N: usize, S: AsyncRead + Unpin>(stream: &mut S) -> Result<[u8; N], String> {
    let mut buf = [0u8; N];
    read_into(stream, &mut buf).await?;
    Ok(buf)
}

async fn read_into<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), String> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err("the proxy closed the connection during the handshake".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::DuplexStream;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn socks(scheme: &str, userinfo: Option<(&str, &str)>) -> Socks {
        Socks::from_url(scheme, userinfo).unwrap().unwrap()
    }

    /// Runs `socks`'s handshake for `target` against a proxy that expects exactly `asked`
    /// (each part in turn) and answers each with its `answers`; after the last answer, the
    /// proxy sends `tunnel!`. Returns the handshake's result and what the client then read.
    async fn against(
        socks: &Socks,
        target: Target<'_>,
        exchange: &[(&[u8], &[u8])],
    ) -> Result<Vec<u8>, String> {
        let (mut client, mut proxy): (DuplexStream, DuplexStream) = tokio::io::duplex(1024);
        let script: Vec<(Vec<u8>, Vec<u8>)> = exchange
            .iter()
            .map(|(a, b)| (a.to_vec(), b.to_vec()))
            .collect();
        let proxy_side = tokio::spawn(async move {
            for (asked, answer) in script {
                let mut got = vec![0u8; asked.len()];
                if proxy.read_exact(&mut got).await.is_err() {
                    return;
                }
                assert_eq!(got, asked, "the client asked");
                proxy.write_all(&answer).await.unwrap();
            }
            proxy.write_all(b"tunnel!").await.unwrap();
            // Held open until the client is done.
            let _ = proxy.read(&mut [0u8; 1]).await;
        });
        let result = tokio::time::timeout(WAIT, socks.connect(&mut client, &target))
            .await
            .expect("the handshake ends");
        let read = match result {
            Ok(()) => {
                let mut after = [0u8; 7];
                tokio::time::timeout(WAIT, client.read_exact(&mut after))
                    .await
                    .expect("the tunnel's first bytes")
                    .unwrap();
                Ok(after.to_vec())
            }
            Err(e) => Err(e),
        };
        drop(client);
        proxy_side.await.unwrap();
        read
    }

    fn v4(s: &str) -> Target<'static> {
        Target::Addr(s.parse().unwrap())
    }

    #[tokio::test]
    async fn socks5_sends_an_address_and_reads_exactly_the_answer() {
        let got = against(
            &socks("socks5", None),
            v4("10.1.2.3:443"),
            &[
                (&[5, 1, 0], &[5, 0]),
                (
                    &[5, 1, 0, 1, 10, 1, 2, 3, 1, 187],
                    // Bound to a name, "bound", port 1.
                    &[5, 0, 0, 3, 5, b'b', b'o', b'u', b'n', b'd', 0, 1],
                ),
            ],
        )
        .await;
        assert_eq!(got.unwrap(), b"tunnel!", "no byte of the tunnel taken");
        let got = against(
            &socks("socks5", None),
            Target::Addr("[::1]:80".parse().unwrap()),
            &[
                (&[5, 1, 0], &[5, 0]),
                (
                    &[
                        5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80,
                    ],
                    &[
                        5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80,
                    ],
                ),
            ],
        )
        .await;
        assert_eq!(got.unwrap(), b"tunnel!");
    }

    #[tokio::test]
    async fn socks5h_sends_the_name_and_the_user_and_password() {
        let got = against(
            &socks("socks5h", Some(("ann", "pw"))),
            Target::Name("api.unipile.com", 443),
            &[
                (&[5, 2, 0, 2], &[5, 2]),
                (&[1, 3, b'a', b'n', b'n', 2, b'p', b'w'], &[1, 0]),
                (
                    b"\x05\x01\x00\x03\x0fapi.unipile.com\x01\xbb",
                    &[5, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                ),
            ],
        )
        .await;
        assert_eq!(got.unwrap(), b"tunnel!");
    }

    #[tokio::test]
    async fn socks5_failures_say_what_the_proxy_answered_in_words() {
        let refused = against(
            &socks("socks5h", None),
            Target::Name("h", 1),
            &[
                (&[5, 1, 0], &[5, 0]),
                (b"\x05\x01\x00\x03\x01h\x00\x01", &[5, 5, 0, 1]),
            ],
        )
        .await;
        assert_eq!(
            refused.unwrap_err(),
            "SOCKS5: the proxy answered connection refused (5)"
        );
        let bad_password = against(
            &socks("socks5", Some(("ann", "hunter2"))),
            v4("10.0.0.1:1"),
            &[
                (&[5, 2, 0, 2], &[5, 2]),
                (b"\x01\x03ann\x07hunter2", &[1, 1]),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(
            bad_password,
            "SOCKS5: the proxy refused the user name and password (status 1)"
        );
        let wants_credentials = against(
            &socks("socks5", None),
            v4("10.0.0.1:1"),
            &[(&[5, 1, 0], &[5, 0xff])],
        )
        .await
        .unwrap_err();
        assert!(
            wants_credentials.contains("wants credentials"),
            "{wants_credentials}"
        );
        let not_socks = against(
            &socks("socks5", None),
            v4("10.0.0.1:1"),
            &[(&[5, 1, 0], b"HT")],
        )
        .await
        .unwrap_err();
        assert!(not_socks.contains("not a SOCKS5 proxy"), "{not_socks}");
        // A proxy that closes halfway through its answer.
        let (mut client, mut proxy) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut greeting = [0u8; 3];
            proxy.read_exact(&mut greeting).await.unwrap();
            proxy.write_all(&[5]).await.unwrap();
        });
        let closed = tokio::time::timeout(
            WAIT,
            socks("socks5", None).connect(&mut client, &v4("10.0.0.1:1")),
        )
        .await
        .expect("the handshake ends")
        .unwrap_err();
        assert_eq!(
            closed,
            "SOCKS5: the proxy closed the connection during the handshake"
        );
    }

    #[tokio::test]
    async fn socks4_sends_an_ipv4_address_and_socks4a_the_name() {
        let got = against(
            &socks("socks4", Some(("ann", ""))),
            v4("10.1.2.3:443"),
            &[(
                &[4, 1, 1, 187, 10, 1, 2, 3, b'a', b'n', b'n', 0],
                &[0, 90, 0, 0, 0, 0, 0, 0],
            )],
        )
        .await;
        assert_eq!(got.unwrap(), b"tunnel!");
        let got = against(
            &socks("socks4a", None),
            Target::Name("h.example", 80),
            &[(
                b"\x04\x01\x00\x50\x00\x00\x00\x01\x00h.example\x00",
                &[0, 90, 0, 0, 0, 0, 0, 0],
            )],
        )
        .await;
        assert_eq!(got.unwrap(), b"tunnel!");
        let rejected = against(
            &socks("socks4", None),
            v4("10.1.2.3:443"),
            &[(&[4, 1, 1, 187, 10, 1, 2, 3, 0], &[0, 91, 0, 0, 0, 0, 0, 0])],
        )
        .await;
        assert_eq!(
            rejected.unwrap_err(),
            "SOCKS4: the proxy rejected the request or could not connect (91)"
        );
    }

    #[tokio::test]
    async fn names_are_resolved_here_unless_the_proxy_resolves_them() {
        let local = socks("socks5", None);
        assert_eq!(
            local.target("127.0.0.1", 1).await.unwrap(),
            v4("127.0.0.1:1")
        );
        match local.target("localhost", 2).await.unwrap() {
            Target::Addr(a) => assert!(a.ip().is_loopback() && a.port() == 2, "{a}"),
            other => panic!("expected an address, got {other:?}"),
        }
        let remote = socks("socks5h", None);
        assert_eq!(
            remote.target("localhost", 2).await.unwrap(),
            Target::Name("localhost", 2)
        );
        assert_eq!(
            remote.target("::1", 3).await.unwrap(),
            Target::Addr("[::1]:3".parse().unwrap()),
            "an address stays an address"
        );
    }

    #[test]
    fn schemes_that_are_not_socks_are_left_to_the_caller() {
        assert!(Socks::from_url("http", None).unwrap().is_none());
        assert!(
            Socks::from_url("https", Some(("u", "p")))
                .unwrap()
                .is_none()
        );
    }
}
