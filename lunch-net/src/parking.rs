//! What lets an idle HTTP/1 connection give hyper's connection back
//! between requests: its 8 KiB read buffer, its write buffer, its cached
//! headers and its state are freed while the client thinks, and a new
//! hyper connection is made on the same transport when bytes arrive.
//!
//! hyper has no option to release its buffers while a keep-alive
//! connection waits; `into_parts` is how it hands back the transport and
//! what it had read but not parsed yet (a pipelined request's start).
//! [`Resume`] replays those bytes to the next hyper connection,
//! [`Answered`] tells the deadlines when hyper is done with a response,
//! and [`Unpinned`] lets hyper's connection be taken apart after it was
//! polled.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::deadlines::Heads;

/// A transport that first yields `prefix`: the bytes a previous hyper
/// connection had read from it and not parsed.
#[derive(Debug)]
pub(crate) struct Resume<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Resume<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Resume<T> {
        Resume { prefix, inner }
    }

    /// The transport, and what a hyper connection had read from it but not
    /// parsed (`read_buf`, from its `into_parts`) followed by what it had
    /// not read yet of the prefix; copied, so that the buffer hyper read
    /// into is freed.
    pub(crate) fn into_parts(self, read_buf: &[u8]) -> (T, Bytes) {
        let prefix = if self.prefix.is_empty() {
            Bytes::copy_from_slice(read_buf)
        } else {
            [read_buf, &self.prefix].concat().into()
        };
        (self.inner, prefix)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Resume<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Resume<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its response as answered when hyper
    /// drops it, which it does once it has taken the last frame.
    pub(crate) struct Answered<B> {
        #[pin]
        body: B,
        answer: Answer,
    }
}

impl<B> Answered<B> {
    pub(crate) fn new(body: B, heads: Heads) -> Answered<B> {
        Answered {
            body,
            answer: Answer(heads),
        }
    }
}

struct Answer(Heads);

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.answered();
    }
}

impl<B: Body> Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A service that is `Unpin` whatever it holds, so that the hyper
/// connection serving it is too and can be taken apart (`into_parts`)
/// after it was polled. Nothing of it is ever pinned: hyper keeps the
/// futures it makes in boxes of its own.
pub(crate) struct Unpinned<S>(pub(crate) S);

impl<S> Unpin for Unpinned<S> {}

impl<R, S: Service<R>> Service<R> for Unpinned<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> S::Future {
        self.0.call(request)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_unparsed_bytes_come_first_then_the_transport() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(a);
        let resume = Resume::new(Bytes::from_static(b"/menu"), b);
        // A hyper connection had read "GET " and not "/menu" yet.
        let (inner, prefix) = resume.into_parts(b"GET ");
        assert_eq!(&prefix[..], b"GET /menu");
        let mut read = String::new();
        Resume::new(prefix, inner).read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "GET /menu HTTP/1.1\r\n");
    }

    #[test]
    fn a_body_counts_its_response_when_dropped() {
        let heads = Heads::default();
        heads.arrived();
        let body = Answered::new(http_body_util::Full::new(Bytes::from_static(b"ok")), heads.clone());
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!heads.between_requests());
        drop(body);
        assert!(heads.between_requests());
    }
}
