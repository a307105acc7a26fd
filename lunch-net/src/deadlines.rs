//! An I/O wrapper that enforces a connection's deadlines: the idle timeout
//! (no byte read or written, or a write blocked that long: a client that
//! keeps sending but stops reading is cut off as if it were silent) and,
//! for HTTP/1, the header timeout (a request's head must arrive in time).
//!
//! hyper has a header timeout of its own, but it takes the clock, allocates
//! a timer and registers it with the runtime's timer wheel for every
//! request, and removes it again when the head has arrived. Here a
//! connection has one timer that ticks a few times per timeout; reads and
//! writes only set flags, and the deadlines are checked when it ticks. A
//! deadline is therefore enforced up to one tick late: a connection is
//! closed between 1× and 1.25× its timeout.
//!
//! The same ticks tell an HTTP/1 connection when to let go of hyper
//! between requests ([`Deadlines::park_between_requests`]): at most once a
//! tick, a connection found waiting for its next request is *parked*, and
//! its server takes hyper's connection apart, freeing its buffers, and
//! waits on the bare socket with [`Deadlines::poll_readable`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_rustls::server::TlsStream;

/// Ticks per timeout: the timer's resolution, and the lateness bound.
const TICKS_PER_TIMEOUT: u32 = 4;

/// What an HTTP/1 connection's server and its I/O share: the request
/// heads received (the server counts one when it passes a request to its
/// handler), the responses answered (the server counts one when hyper is
/// done with a response's body), and whether the connection is parked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heads(Arc<Exchanges>);

#[derive(Debug, Default)]
struct Exchanges {
    arrived: AtomicU64,
    answered: AtomicU64,
    /// Whether the latest request came with a body: hyper may still be
    /// reading (or discarding) it after the response.
    body: AtomicBool,
    parked: AtomicBool,
    /// Times parked.
    parks: AtomicU64,
}

impl Heads {
    /// Counts one more; returns how many had arrived before it.
    #[cfg(test)]
    pub(crate) fn arrived(&self) -> u64 {
        self.request(false)
    }

    /// Counts one more request, with a body or not; returns how many had
    /// arrived before it.
    pub(crate) fn request(&self, body: bool) -> u64 {
        self.0.body.store(body, Ordering::Relaxed);
        self.0.arrived.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one response whose body hyper has taken to the end (or
    /// dropped).
    pub(crate) fn answered(&self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the connection is between requests: at least one came,
    /// every one was answered, and the latest had no body left to read.
    pub(crate) fn between_requests(&self) -> bool {
        let arrived = self.count();
        arrived > 0 && self.0.answered.load(Ordering::Relaxed) == arrived && !self.0.body.load(Ordering::Relaxed)
    }

    /// Whether the I/O parked the connection since the last call.
    pub(crate) fn take_parked(&self) -> bool {
        self.0.parked.swap(false, Ordering::Relaxed)
    }

    /// How many times the connection was parked.
    #[cfg(test)]
    pub(crate) fn parks(&self) -> u64 {
        self.0.parks.load(Ordering::Relaxed)
    }

    fn park(&self) {
        self.0.parks.fetch_add(1, Ordering::Relaxed);
        self.0.parked.store(true, Ordering::Relaxed);
    }

    fn unpark(&self) {
        self.0.parked.store(false, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.arrived.load(Ordering::Relaxed)
    }
}

/// A transport whose socket can be waited on without reading from it
/// (and so without the buffers a read needs).
pub(crate) trait Readable {
    /// Ready when the socket has bytes to read (or has closed).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readable for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// A connection is parked only after its reads have drained rustls (a
/// read was pending): the socket is then all there is to wait on.
impl Readable for Box<TlsStream<TcpStream>> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// `inner`, failing with [`io::ErrorKind::TimedOut`] once a deadline passes.
#[derive(Debug)]
pub(crate) struct Deadlines<T> {
    inner: T,
    // Boxed so the wrapper stays `Unpin`, as hyper requires of its I/O.
    timer: Pin<Box<Sleep>>,
    tick: Duration,
    ticks: u64,
    /// Whether a byte was read or written since the last tick.
    progress: bool,
    /// Ticks in a row without progress, and how many close the connection.
    silent_ticks: u64,
    idle_ticks: u64,
    /// The tick since which writes have been pending (the client does not
    /// read and the socket buffer is full), if they are. Reads do not
    /// reset it: what the client sends is no progress while it takes
    /// nothing.
    write_blocked: Option<u64>,
    /// Whether bytes were written and not flushed since.
    unflushed: bool,
    /// Whether the latest read was pending.
    read_pending: bool,
    head: Option<HeadDeadline>,
    /// Whether [`Deadlines::park_between_requests`] is on, and the tick
    /// the connection was last parked on.
    parking: bool,
    parked_on: Option<u64>,
    /// Whether the connection was parked and has not moved a byte since.
    parked: bool,
}

#[derive(Debug)]
struct HeadDeadline {
    heads: Heads,
    /// Ticks the head may take; it fails on the tick after.
    ticks: u64,
    /// Set by a write: the response is under way, so the next read waits
    /// for a new head.
    wrote: bool,
    /// While waiting for a head: the tick the wait began on, and the head
    /// count then.
    waiting: Option<(u64, u64)>,
}

impl<T> Deadlines<T> {
    /// Closes `inner` after `idle` without a byte read or written.
    pub(crate) fn idle(inner: T, idle: Duration) -> Deadlines<T> {
        Deadlines::new(inner, idle, None)
    }

    /// Also closes `inner` when, after the end of a response or the start
    /// of the connection, no new request head (counted by `heads`) arrives
    /// within `header`.
    pub(crate) fn http1(inner: T, idle: Duration, header: Duration, heads: Heads) -> Deadlines<T> {
        Deadlines::new(inner, idle, Some((header, heads)))
    }

    fn new(inner: T, idle: Duration, header: Option<(Duration, Heads)>) -> Deadlines<T> {
        let shortest = header.as_ref().map_or(idle, |(header, _)| idle.min(*header));
        let tick = (shortest / TICKS_PER_TIMEOUT).max(Duration::from_millis(1));
        let ticks_in = |timeout: Duration| timeout.as_nanos().div_ceil(tick.as_nanos()) as u64;
        Deadlines {
            inner,
            timer: Box::pin(sleep_until(Instant::now() + tick)),
            tick,
            ticks: 0,
            progress: false,
            silent_ticks: 0,
            idle_ticks: ticks_in(idle),
            write_blocked: None,
            unflushed: false,
            read_pending: false,
            parking: false,
            parked_on: None,
            parked: false,
            head: header.map(|(header, heads)| HeadDeadline {
                ticks: ticks_in(header),
                wrote: false,
                waiting: Some((0, heads.count())),
                heads,
            }),
        }
    }

    /// Parks the connection (see [`Heads::take_parked`]) when a read is
    /// pending while it is between requests with its responses flushed,
    /// once a tick at most: an idle connection is parked as soon as it has
    /// its answer, and a busy keep-alive connection (whose next request
    /// then needs a new hyper connection) only a few times a minute.
    /// Only for HTTP/1.
    pub(crate) fn park_between_requests(&mut self) {
        self.parking = true;
    }

    /// Waits, within the deadlines, until the socket has bytes to read,
    /// without reading them: how a parked connection waits.
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        T: Readable,
    {
        if let Some(head) = &mut self.head {
            head.reading(self.ticks);
        }
        match self.inner.poll_read_ready(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }

    /// A read is pending: parks the connection if it should be (the
    /// server then takes hyper's connection apart as soon as hyper's poll
    /// returns, which it does with the read pending).
    fn check_park(&mut self) {
        let Some(head) = &self.head else {
            return;
        };
        if self.parking
            && self.parked_on != Some(self.ticks)
            && !self.unflushed
            && self.write_blocked.is_none()
            && head.heads.between_requests()
        {
            self.parked_on = Some(self.ticks);
            self.parked = true;
            head.heads.park();
        }
    }

    /// Called when the inner I/O is pending: fails if a deadline passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            self.ticks += 1;
            if std::mem::take(&mut self.progress) {
                self.silent_ticks = 0;
            } else {
                self.silent_ticks += 1;
            }
            if self.silent_ticks >= self.idle_ticks {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long"));
            }
            if self
                .write_blocked
                .is_some_and(|since| self.ticks - since > self.idle_ticks)
            {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading responses",
                ));
            }
            if let Some(head) = &mut self.head {
                head.update();
                if let Some((since, _)) = head.waiting {
                    if self.ticks - since > head.ticks {
                        return Poll::Ready(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request headers not received in time",
                        ));
                    }
                }
            }
            // From now, not from the missed deadline: a connection busy
            // for a while (never pending, so never ticking) must not
            // count the ticks it missed as silent.
            self.timer.as_mut().reset(Instant::now() + self.tick);
        }
    }

    fn track<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(result) => {
                self.progress = true;
                // Parked only while nothing moves: the server takes
                // hyper's connection apart only if it is still so.
                if std::mem::take(&mut self.parked) {
                    if let Some(head) = &self.head {
                        head.heads.unpark();
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }
}

impl HeadDeadline {
    /// Ends the wait once a head has arrived.
    fn update(&mut self) {
        if let Some((_, count)) = self.waiting {
            if self.heads.count() != count {
                self.waiting = None;
            }
        }
    }

    /// A read is about to happen on tick `now`: after a response, it starts
    /// the wait for the next head.
    fn reading(&mut self, now: u64) {
        self.update();
        if self.waiting.is_none() && std::mem::take(&mut self.wrote) {
            self.waiting = Some((now, self.heads.count()));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(head) = &mut this.head {
            head.reading(this.ticks);
        }
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let polled = this.track(cx, polled);
        this.read_pending = polled.is_pending();
        if this.read_pending {
            this.check_park();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&polled);
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Flushing a TLS stream is where its records reach the socket.
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => {
                this.write_blocked = None;
                if result.is_ok() {
                    this.unflushed = false;
                    // hyper reads again only when woken: with a read
                    // pending, the end of a response is the time to park.
                    if this.read_pending {
                        this.check_park();
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A TLS stream writes its close_notify here: a client that stopped
        // reading holds it as it would hold a response.
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(result) => {
                this.write_blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }
}

impl<T> Deadlines<T> {
    /// A flush or close that cannot go on: the client has taken nothing
    /// since this tick (if not since an earlier one); fails once a
    /// deadline passed.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_blocked.get_or_insert(self.ticks);
        self.poll_expired(cx).map(Err)
    }

    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(_) => self.write_blocked = None,
            Poll::Pending => {
                self.write_blocked.get_or_insert(self.ticks);
            }
        }
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                self.unflushed = true;
                if let Some(head) = &mut self.head {
                    head.wrote = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECOND: Duration = Duration::from_secs(1);

    /// Reads until `a` fails, returning how long that took.
    async fn time_to_failure<T: AsyncRead + Unpin>(a: &mut T) -> (Duration, io::Error) {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match a.read(&mut buf).await {
                Ok(0) => panic!("closed instead of timing out"),
                Ok(_) => continue,
                Err(e) => return (start.elapsed(), e),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_cut_between_one_and_one_and_a_quarter_timeouts() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Deadlines::idle(a, 8 * SECOND);
        // A byte every 7 s keeps it alive well past the first deadline...
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(7 * SECOND).await;
                b.write_all(b"!").await.unwrap();
            }
            b
        });
        // ...and after the last one, at 28 s, silence ends it: no sooner
        // than 8 s later, and no later than 10.
        let (after, err) = time_to_failure(&mut a).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(after >= 36 * SECOND && after <= 38 * SECOND, "{after:?}");
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_but_never_reads_is_cut_at_the_idle_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let a = Deadlines::idle(a, 8 * SECOND);
        // The client sends a byte every second, and never reads.
        let sender = tokio::spawn(async move {
            while b.write_all(b"?").await.is_ok() {
                tokio::time::sleep(SECOND).await;
            }
        });
        // The server reads what comes while it writes answers, as HTTP/2
        // does; the answers fill the pipe (64 bytes) at once.
        let start = Instant::now();
        let (mut reader, mut writer) = tokio::io::split(a);
        let reading = async {
            let mut buf = [0u8; 64];
            loop {
                if let Err(e) = reader.read(&mut buf).await {
                    return e;
                }
            }
        };
        let writing = async {
            loop {
                if let Err(e) = writer.write_all(&[b'!'; 16]).await {
                    return e;
                }
            }
        };
        let failed = tokio::select! {
            e = reading => e,
            e = writing => e,
        };
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut, "{failed}");
        assert_eq!(failed.to_string(), "the client stopped reading responses");
        // Cut 8 to 10 s after the writes blocked, although a byte arrived
        // every second.
        let after = start.elapsed();
        assert!(after >= 8 * SECOND && after <= 10 * SECOND, "{after:?}");
        sender.abort();
    }

    /// A transport whose close never completes: a TLS stream whose
    /// close_notify the client never takes.
    struct NeverClosed(tokio::io::DuplexStream);

    impl AsyncRead for NeverClosed {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for NeverClosed {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_the_client_never_takes_is_cut_at_the_idle_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let mut a = Deadlines::idle(NeverClosed(a), 8 * SECOND);
        let start = Instant::now();
        let failed = tokio::time::timeout(60 * SECOND, a.shutdown())
            .await
            .expect("the close is never cut")
            .unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut, "{failed}");
        let after = start.elapsed();
        assert!(after >= 8 * SECOND && after <= 10 * SECOND, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_in_byte_by_byte_is_cut_at_the_header_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let heads = Heads::default();
        let mut a = Deadlines::http1(a, 60 * SECOND, 4 * SECOND, heads.clone());
        let trickle = tokio::spawn(async move {
            // A byte every 500 ms never lets the idle timeout fire.
            while b.write_all(b"x").await.is_ok() {
                tokio::time::sleep(SECOND / 2).await;
            }
        });
        let (after, err) = time_to_failure(&mut a).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(after >= 4 * SECOND && after <= 5 * SECOND, "{after:?}");
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_gets_the_header_timeout_after_the_previous_response() {
        let (a, b) = tokio::io::duplex(64);
        let heads = Heads::default();
        let mut a = Deadlines::http1(a, 60 * SECOND, 4 * SECOND, heads.clone());
        // Five requests, each sent 3 s after the previous response: 15 s in
        // all, far past the header timeout, yet each head is in time.
        let client = tokio::spawn(async move {
            let mut b = b;
            let mut buf = [0u8; 3];
            for _ in 0..5 {
                tokio::time::sleep(3 * SECOND).await;
                b.write_all(b"GET").await.unwrap();
                b.read_exact(&mut buf).await.unwrap();
            }
            b
        });
        let mut buf = [0u8; 3];
        for _ in 0..5 {
            a.read_exact(&mut buf).await.unwrap();
            heads.arrived();
            a.write_all(b"200").await.unwrap();
        }
        // A keep-alive connection with no next request is closed by the
        // header timeout, not the idle timeout.
        let (after, err) = time_to_failure(&mut a).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(after >= 4 * SECOND && after <= 5 * SECOND, "{after:?}");
        drop(client.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_response_is_not_cut_by_the_header_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let heads = Heads::default();
        let mut a = Deadlines::http1(a, 60 * SECOND, 4 * SECOND, heads.clone());
        let mut buf = [0u8; 8];
        b.write_all(b"GET").await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), 3);
        heads.arrived();
        // The handler takes 30 s; hyper meanwhile polls for the next head.
        let read = tokio::time::timeout(30 * SECOND, a.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "the connection failed while its request was served: {read:?}"
        );
    }
}
