//! HTTP/1.1 to Unipile, for servers that refuse HTTP/2 (`--upstream-http 1.1`, or `auto`
//! when ALPN picks `http/1.1`): one call at a time on a connection, written and read here.
//!
//! Why not hyper's client connection: a pending long poll would hold hyper's 8 KiB write
//! buffer (allocated whatever its use), its dispatch channel (a 32-slot block, ~8 KiB) and a
//! task; reqwest's pool on top of it cost ~30 KiB per pending call (benches/README.md). A
//! pending call here holds the connection (TCP, or rustls's state and its 4 KiB read buffer)
//! and a read buffer of [`READ_CHUNK`]. Unipile's requests are one small JSON `POST` and its
//! answers small JSON bodies, which is all this speaks: `Content-Length`, chunked or
//! close-delimited bodies, 1xx answers skipped, keep-alive unless the server says `close`.

use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::Stream;
use super::{MAX_BODY_BYTES, retry_after_value};

/// Bytes read at a time; Unipile's answers and their heads are under a kilobyte.
const READ_CHUNK: usize = 1024;
/// Largest response head accepted (nginx's default for requests is 8 KiB; a CDN adds some).
const MAX_HEAD: usize = 16 * 1024;

/// A keep-alive HTTP/1.1 connection.
pub(crate) struct H1Conn {
    stream: Stream,
    /// Whether a call has been made on it: a reused connection the server closed meanwhile
    /// fails before any answer byte, and that call was never taken.
    reused: bool,
}

/// What a call answered.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum H1Error {
    /// A reused connection closed before the first byte of an answer: the server had closed it
    /// while idle and never took the request (the keep-alive race every client retries).
    NotSent,
    /// Anything else; the reason carries no URL, header or body.
    Failed(String),
}

impl H1Conn {
    /// A connection fresh from the dialer.
    pub fn new(stream: Stream) -> H1Conn {
        H1Conn {
            stream,
            reused: false,
        }
    }

    /// Writes `request` (head and body, one write) and reads the answer. Returns the
    /// connection back when it may carry another call.
    pub async fn call(mut self, request: Vec<u8>) -> (Result<Answer, H1Error>, Option<H1Conn>) {
        let reused = std::mem::replace(&mut self.reused, true);
        let written = async {
            self.stream.write_all(&request).await?;
            self.stream.flush().await
        }
        .await;
        // Nothing of the request stays alive while the answer is awaited.
        drop(request);
        if let Err(e) = written {
            let error = if reused {
                H1Error::NotSent
            } else {
                H1Error::Failed(format!("write failed: {}", e.kind()))
            };
            return (Err(error), None);
        }
        let mut reader = Reader {
            stream: &mut self.stream,
            buf: Vec::new(),
            pos: 0,
        };
        match reader.answer().await {
            Ok((answer, keep_alive)) => {
                let leftover = reader.buf.len() > reader.pos;
                let again = (keep_alive && !leftover).then_some(self);
                (Ok(answer), again)
            }
            Err(ReadError::ClosedBeforeAnswer) if reused => (Err(H1Error::NotSent), None),
            Err(ReadError::ClosedBeforeAnswer) => (
                Err(H1Error::Failed("connection closed before an answer".into())),
                None,
            ),
            Err(ReadError::Failed(reason)) => (Err(H1Error::Failed(reason)), None),
        }
    }
}

/// The request for `target` (origin form, or absolute form through a forwarding proxy):
/// headers as given (`name: value` pairs), then `body`.
pub(crate) fn request(target: &str, host: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
    }
    out.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

enum ReadError {
    ClosedBeforeAnswer,
    Failed(String),
}

fn failed(reason: impl Into<String>) -> ReadError {
    ReadError::Failed(reason.into())
}

/// Reads one answer; `buf[pos..]` is what was read and not yet used.
struct Reader<'a> {
    stream: &'a mut Stream,
    buf: Vec<u8>,
    pos: usize,
}

/// How the body of an answer ends.
#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

impl Reader<'_> {
    /// Reads more; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, ReadError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) if len == 0 && is_reset(&e) => {
                self.buf.truncate(len);
                return Err(ReadError::ClosedBeforeAnswer);
            }
            Err(e) => return Err(failed(format!("read failed: {}", e.kind()))),
        };
        self.buf.truncate(len + n);
        Ok(n > 0)
    }

    /// The answer, and whether the connection may be used again.
    async fn answer(&mut self) -> Result<(Answer, bool), ReadError> {
        let mut first = true;
        loop {
            let (status, head_len, framing, keep_alive, retry_after) = loop {
                if let Some(head) = parse_head(&self.buf[self.pos..])? {
                    break head;
                }
                if self.buf.len() - self.pos > MAX_HEAD {
                    return Err(failed("answer head too large"));
                }
                if !self.fill().await? {
                    return Err(if first && self.buf.is_empty() {
                        ReadError::ClosedBeforeAnswer
                    } else {
                        failed("connection closed in the answer head")
                    });
                }
                first = false;
            };
            self.pos += head_len;
            // 100 Continue, 103 Early Hints: the answer follows.
            if status.is_informational() {
                continue;
            }
            let body = self.body(framing).await?;
            let keep_alive = keep_alive && !matches!(framing, Framing::Close);
            return Ok((
                Answer {
                    status,
                    retry_after,
                    body,
                },
                keep_alive,
            ));
        }
    }

    async fn body(&mut self, framing: Framing) -> Result<Vec<u8>, ReadError> {
        match framing {
            Framing::Length(len) => {
                if len > MAX_BODY_BYTES {
                    return Err(failed(format!("response body over {MAX_BODY_BYTES} bytes")));
                }
                while self.buf.len() - self.pos < len {
                    if !self.fill().await? {
                        return Err(failed("connection closed in the body"));
                    }
                }
                let body = self.buf[self.pos..self.pos + len].to_vec();
                self.pos += len;
                Ok(body)
            }
            Framing::Close => {
                while self.fill().await? {
                    if self.buf.len() - self.pos > MAX_BODY_BYTES {
                        return Err(failed(format!("response body over {MAX_BODY_BYTES} bytes")));
                    }
                }
                let body = self.buf[self.pos..].to_vec();
                self.pos = self.buf.len();
                Ok(body)
            }
            Framing::Chunked => self.chunked().await,
        }
    }

    /// The next line (without its CRLF), read as needed.
    async fn line(&mut self) -> Result<String, ReadError> {
        loop {
            let rest = &self.buf[self.pos..];
            if let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&rest[..end]).into_owned();
                self.pos += end + 2;
                return Ok(line);
            }
            if rest.len() > MAX_HEAD {
                return Err(failed("chunk line too long"));
            }
            if !self.fill().await? {
                return Err(failed("connection closed in a chunked body"));
            }
        }
    }

    async fn chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| failed("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(failed(format!("response body over {MAX_BODY_BYTES} bytes")));
            }
            while self.buf.len() - self.pos < size + 2 {
                if !self.fill().await? {
                    return Err(failed("connection closed in a chunked body"));
                }
            }
            body.extend_from_slice(&self.buf[self.pos..self.pos + size]);
            if &self.buf[self.pos + size..self.pos + size + 2] != b"\r\n" {
                return Err(failed("chunk without its CRLF"));
            }
            self.pos += size + 2;
        }
    }
}

/// A connection the server reset, or closed under our write, before answering.
fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

type Head = (StatusCode, usize, Framing, bool, Option<Duration>);

/// Parses a complete head: status, head length, body framing, keep-alive, `Retry-After`.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(failed(format!("bad answer head: {e}"))),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| failed("bad status"))?;
    let mut keep_alive = response.version == Some(1);
    let mut framing = Framing::Close;
    let mut retry_after = None;
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            if !matches!(framing, Framing::Chunked) {
                let len = value.parse().map_err(|_| failed("bad content-length"))?;
                framing = Framing::Length(len);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 6.3: chunked as the last coding wins over any Content-Length.
            if value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
            {
                framing = Framing::Chunked;
            } else {
                framing = Framing::Close;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = retry_after_value(value);
        }
    }
    // No body at all for these, whatever the headers say.
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        framing = Framing::Length(0);
    }
    Ok(Some((status, len, framing, keep_alive, retry_after)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A server that answers each request on one connection with the next of `answers`
    /// (raw bytes), then closes; returns its port.
    async fn raw_server(answers: Vec<&'static [u8]>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            for answer in answers {
                let mut seen = Vec::new();
                // Reads one request: head, then its Content-Length.
                loop {
                    let mut chunk = [0u8; 512];
                    let n = tcp.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&chunk[..n]);
                    let mut headers = [httparse::EMPTY_HEADER; 16];
                    let mut req = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(len)) = req.parse(&seen) {
                        let body: usize = req
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                            .unwrap_or(0);
                        if seen.len() >= len + body {
                            break;
                        }
                    }
                }
                tcp.write_all(answer).await.unwrap();
            }
        });
        port
    }

    async fn conn(port: u16) -> H1Conn {
        H1Conn::new(Stream::Plain(
            TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ))
    }

    fn req() -> Vec<u8> {
        request(
            "/v2/auth/checkpoint",
            "127.0.0.1",
            &[("accept", b"application/json")],
            b"{}",
        )
    }

    #[tokio::test]
    async fn reads_length_chunked_and_informational_answers_on_one_connection() {
        let port = raw_server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\ntrailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nz",
        ])
        .await;
        let (first, again) = conn(port).await.call(req()).await;
        let first = first.ok().unwrap();
        assert_eq!(
            (first.status, &first.body[..]),
            (StatusCode::OK, &b"{}"[..])
        );
        let (second, again) = again.expect("kept alive").call(req()).await;
        let second = second.ok().unwrap();
        assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(&second.body[..], b"abcde");
        let (third, again) = again.expect("kept alive").call(req()).await;
        assert_eq!(&third.ok().unwrap().body[..], b"z");
        assert!(again.is_none(), "connection: close is not reused");
    }

    #[tokio::test]
    async fn a_close_delimited_body_is_read_to_the_end() {
        let port = raw_server(vec![b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}"]).await;
        let (answer, again) = conn(port).await.call(req()).await;
        assert_eq!(&answer.ok().unwrap().body[..], b"{\"a\":1}");
        assert!(again.is_none());
    }

    #[tokio::test]
    async fn a_reused_connection_closed_before_answering_was_never_sent_a_fresh_one_failed() {
        let port = raw_server(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        let (first, again) = conn(port).await.call(req()).await;
        assert!(first.is_ok());
        // The server closed after one answer: the next call on that connection never got in.
        let (second, _) = again.unwrap().call(req()).await;
        assert!(
            matches!(second, Err(H1Error::NotSent)),
            "{:?}",
            second.err()
        );

        let port = raw_server(vec![]).await;
        let (fresh, _) = conn(port).await.call(req()).await;
        assert!(
            matches!(fresh, Err(H1Error::Failed(_))),
            "{:?}",
            fresh.err()
        );
    }

    #[tokio::test]
    async fn oversized_and_malformed_answers_are_errors_not_panics() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
        ] {
            let port = raw_server(vec![answer]).await;
            let (got, _) = conn(port).await.call(req()).await;
            assert!(matches!(got, Err(H1Error::Failed(_))), "{answer:?}");
        }
    }
}
