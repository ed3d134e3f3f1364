//! [`Coalesce`]: an I/O wrapper that gathers the writes made between two flushes into one.
//!
//! The `qr` frame goes out as a fragmented WebSocket message (1 KiB frames, see
//! [`crate::http::link_socket::FRAGMENT_SIZE`]) so that tungstenite's write buffer, which keeps the capacity of
//! the largest frame it ever wrote, stays small in every open session. Written straight to the
//! socket, each fragment was its own `send` system call and TCP segment, and the client woke up
//! for each of them. Gathered here, the five fragments of a 4.8 KB `qr` frame leave in one
//! system call and arrive in one segment, and the gathering buffer is freed after each flush,
//! so an idle session holds nothing for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered at most before the wrapper writes them out, even without a flush; a write as
/// large as this on its own goes straight through.
pub const GATHER_LIMIT: usize = 16 * 1024;

/// Gathers writes until a flush (or [`GATHER_LIMIT`]); reads pass through.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// Gathered bytes not yet written; `written..` of it is still to go.
    pending: Vec<u8>,
    written: usize,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out what is gathered; frees the buffer once it is all written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > GATHER_LIMIT {
            ready!(this.poll_drain(cx))?;
            if buf.len() >= GATHER_LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that counts its `poll_write` calls and accepts at most `max` bytes per call.
    struct Counting {
        out: Vec<u8>,
        calls: usize,
        max: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn counting(max: usize) -> Coalesce<Counting> {
        Coalesce::new(Counting {
            out: Vec::new(),
            calls: 0,
            max,
        })
    }

    #[tokio::test]
    async fn writes_between_flushes_leave_in_one_write_and_the_buffer_is_freed() {
        let mut io = counting(usize::MAX);
        for piece in [&b"first "[..], b"second ", b"third"] {
            io.write_all(piece).await.unwrap();
        }
        assert_eq!(io.inner.calls, 0, "nothing is written before the flush");
        io.flush().await.unwrap();
        assert_eq!(io.inner.calls, 1);
        assert_eq!(io.inner.out, b"first second third");
        assert_eq!(io.pending.capacity(), 0, "an idle socket holds no buffer");
    }

    #[tokio::test]
    async fn partial_writes_are_carried_on_and_large_writes_go_straight_through() {
        let mut io = counting(1000);
        io.write_all(&[1; 2500]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.calls, 3);
        let big = vec![2; GATHER_LIMIT + 1];
        io.write_all(&[3; 10]).await.unwrap();
        io.write_all(&big).await.unwrap();
        io.flush().await.unwrap();
        let out = &io.inner.out;
        assert_eq!(out.len(), 2500 + 10 + big.len());
        assert_eq!(
            &out[2500..2510],
            &[3; 10],
            "gathered bytes go out before a large write"
        );
        assert!(out[2510..].iter().all(|&b| b == 2));
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_gathered_first_and_reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Coalesce::new(a);
        io.write_all(b"bye").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        b.write_all(b"hello").await.unwrap();
        let mut read = [0; 5];
        io.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"hello");
    }
}
