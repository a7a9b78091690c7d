//! The HTTP door's connections, driven by hyper directly (as `axum::serve`
//! does, but with the two timeouts it cannot set):
//!
//! - **Header timeout** ([`Timeouts::header`]): a request's header must
//!   arrive in full within this time of the server starting to read it, or
//!   the connection is closed (hyper's HTTP/1 `header_read_timeout`). The
//!   server starts to read a header when the connection opens and again
//!   after each response on a keep-alive connection, so an idle keep-alive
//!   connection is closed after this time too.
//! - **Idle timeout** ([`Timeouts::idle`]): a connection on which no byte is
//!   read or written for this time is closed, whatever it is doing: a body
//!   that stops arriving, a client that stops reading its response.
//!
//! The door speaks HTTP/1.1 (and 1.0), as Segment's API does.
//!
//! Without them, a client could hold a connection (and its task and
//! buffers) forever by sending half a header, or nothing at all.

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// The two connection timeouts; `None` turns one off.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest wait for a request's header, in full.
    pub header: Option<Duration>,
    /// Longest time with no byte read or written.
    pub idle: Option<Duration>,
}

/// When a connection last moved a byte, in milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { opened: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        // Milliseconds since the connection opened fit a u64 for 584 million
        // years.
        self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }
}

/// Resolves once the connection has moved no byte for `idle`; never when
/// `idle` is `None` or too long for the clock.
async fn idle_for(activity: Activity, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    // Each round waits until `idle` after the last byte; it ends when no
    // byte moved meanwhile, so rounds are bounded by the bytes moved.
    loop {
        let last = activity.last_ms();
        let Some(deadline) =
            activity.opened.checked_add(Duration::from_millis(last)).and_then(|t| t.checked_add(idle))
        else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(deadline).await;
        if activity.last_ms() == last {
            return;
        }
    }
}

/// An IO that notes every byte it moves in an [`Activity`].
struct Tracked<I> {
    inner: I,
    activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// connections finish what they are doing (each is told to close after
/// its request in flight) and returns when they have.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    // Each connection holds a receiver; `closed()` resolves when the last
    // one is dropped.
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        // The listener waits out failed accepts itself (out of file
        // descriptors: it sleeps rather than spins; a connection reset
        // before it was accepted: it tries again).
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        tokio::spawn(serve_connection(io, app.clone(), timeouts, close_rx.clone()));
    }
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(());
    close_tx.closed().await;
    Ok(())
}

/// Serves one connection within `timeouts`; a change on `close` asks it to
/// close after its request in flight.
pub async fn serve_connection<I>(io: I, app: Router, timeouts: Timeouts, mut close: watch::Receiver<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked { inner: io, activity: activity.clone() });
    // HTTP/1 only, as Segment's API: with HTTP/2 allowed too, the builder
    // first waits for enough bytes to tell the two apart, and the header
    // timeout would not start until then (a silent connection would stay).
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    let connection = builder.serve_connection(io, TowerToHyperService::new(app));
    let mut connection = pin!(connection);
    let mut idle = pin!(idle_for(activity, timeouts.idle));
    let mut closing = false;
    loop {
        tokio::select! {
            // Done, or failed (a header timeout among others): either way
            // the connection is over.
            _ = connection.as_mut() => break,
            // Dropping the connection closes the socket.
            _ = &mut idle => break,
            _ = close.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
