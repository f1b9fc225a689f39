//! A socket that can be cut from outside: once [`Cutoff::cut`] is called, every read and write
//! fails, waking a read that is waiting for a stalled peer. russh runs each connection in a task
//! of its own, so this is how the login grace timer ends a connection wherever it stalled
//! (the version line, the key exchange, authentication).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
pub struct Cutoff {
    cut: AtomicBool,
    reader: AtomicWaker,
}

impl Cutoff {
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the connection was cut")
}

pub struct CutStream<S> {
    inner: S,
    cutoff: Arc<Cutoff>,
}

impl<S> CutStream<S> {
    pub fn new(inner: S, cutoff: Arc<Cutoff>) -> Self {
        CutStream { inner, cutoff }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CutStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.cutoff.reader.register(cx.waker());
        if self.cutoff.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CutStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cutoff.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_cut_wakes_a_waiting_read() {
        let (client, server) = tokio::io::duplex(64);
        let cutoff = Arc::new(Cutoff::default());
        let mut stream = CutStream::new(server, cutoff.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            stream.read(&mut buf).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the peer sent nothing");
        cutoff.cut();
        let r = tokio::time::timeout(std::time::Duration::from_secs(1), reader)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        drop(client);
    }
}
