//! A fixed set of threads for blocking work that must not grow with the number of clients:
//! uploads (`vault::upload`), downloads (`vault::download`) and password checks
//! (`sftp::guard`), a pool each. Jobs run in the
//! order they come; a job's answer comes back through a oneshot channel.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

/// The number of cores, as the pools size themselves.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs in the order they come.
pub struct Pool {
    queue: Arc<(Mutex<VecDeque<Job>>, Condvar)>,
}

impl Pool {
    /// `threads` workers (at least one), named `name`.
    pub fn new(threads: usize, name: &str) -> io::Result<Pool> {
        let queue: Arc<(Mutex<VecDeque<Job>>, Condvar)> = Arc::default();
        for _ in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    loop {
                        let job = {
                            let (jobs, ready) = &*queue;
                            let mut jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
                            loop {
                                if let Some(job) = jobs.pop_front() {
                                    break job;
                                }
                                jobs = ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
                            }
                        };
                        // A job that panics loses its answer (the caller sees the channel
                        // closed), not the worker.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Pool { queue })
    }

    /// Runs `f` on a worker; the answer comes back through the receiver.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let (jobs, ready) = &*self.queue;
        jobs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        ready.notify_one();
        rx
    }
}
