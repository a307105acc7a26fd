//! Thread-per-core connection workers.
//!
//! Each worker is a thread running a single-threaded tokio runtime. A
//! server's accept loop hands every connection it accepts to the worker
//! with the fewest open connections; the socket is registered with that
//! worker's reactor, and the connection, with every task it spawns (one per
//! HTTP/2 stream), lives on that thread until it closes.
//!
//! Nothing of a connection moves between threads: waking it is never a
//! signal to another thread, and no scheduler steals an HTTP/2 stream away
//! from its connection, which would make the two contend for the
//! connection's state on every request.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::probe::Probe;

/// A pool of connection workers, one thread each. Cheap to clone; all
/// clones share the same threads.
#[derive(Debug, Clone)]
pub struct Workers {
    inner: Arc<[Worker]>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections this worker serves now.
    open: AtomicUsize,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `count` workers (at least one), named `worker-0`, `worker-1`...
    pub fn start(count: usize) -> io::Result<Workers> {
        let workers = (0..count.max(1))
            .map(|i| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                let thread = std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime ends the connections still open.
                })?;
                Ok(Worker {
                    handle,
                    open: AtomicUsize::new(0),
                    stop: Mutex::new(Some(stop)),
                    thread: Mutex::new(Some(thread)),
                })
            })
            .collect::<io::Result<Vec<Worker>>>()?;
        Ok(Workers { inner: workers.into() })
    }

    /// Connections each worker serves now.
    pub fn open_connections(&self) -> Vec<usize> {
        self.inner.iter().map(|w| w.open.load(Ordering::Relaxed)).collect()
    }

    /// One probe per worker: each answers only if its thread still runs
    /// tasks.
    pub fn probes(&self) -> Vec<Probe> {
        self.inner.iter().map(|w| Probe::worker(w.handle.clone())).collect()
    }

    /// Moves `stream` to the least busy worker and runs `serve(stream)`
    /// there.
    pub(crate) fn spawn<F, Fut>(&self, stream: TcpStream, serve: F) -> io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (index, worker) = self
            .inner
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("there is at least one worker"));
        let stream = stream.into_std()?;
        let stream = {
            // Registers the socket with the worker's reactor.
            let _runtime = worker.handle.enter();
            TcpStream::from_std(stream)?
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        // Made here, not in the task: a task dropped before it first ran
        // (the runtime stopping) still gives its count back.
        let open = Open {
            workers: self.clone(),
            index,
        };
        worker.handle.spawn(async move {
            let _open = open;
            serve(stream).await;
        });
        Ok(())
    }

    /// Stops every worker, ending the connections still open, and waits for
    /// the threads to finish. Call after the servers have drained.
    pub fn shutdown(&self) {
        for worker in self.inner.iter() {
            if let Some(stop) = lock(&worker.stop).take() {
                let _ = stop.send(());
            }
        }
        for worker in self.inner.iter() {
            if let Some(thread) = lock(&worker.thread).take() {
                let _ = thread.join();
            }
        }
    }
}

/// A lock that a panic elsewhere cannot poison for good: the data is an
/// `Option` taken once.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a connection on its worker for as long as it lives.
struct Open {
    workers: Workers,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.workers.inner[self.index].open.fetch_sub(1, Ordering::Relaxed);
    }
}
