//! Periodic fsync for engines whose own options have none.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};

use super::SYNC_INTERVAL;

/// A thread that fsyncs an engine's log every [`SYNC_INTERVAL`], for engines whose own options
/// have no periodic sync. It stops when [`PeriodicSync::stop`] is called or it is dropped.
pub struct PeriodicSync {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl PeriodicSync {
    pub fn spawn(sync: impl Fn() -> Result<()> + Send + 'static) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let (lock, cvar) = &*flag;
            loop {
                let stopped = lock.lock().expect("sync flag lock");
                let (stopped, _) = cvar
                    .wait_timeout_while(stopped, SYNC_INTERVAL, |stopped| !*stopped)
                    .expect("sync flag lock");
                if *stopped {
                    return Ok(());
                }
                drop(stopped);
                sync()?;
            }
        });
        PeriodicSync {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread and reports the first fsync failure, if any.
    pub fn stop(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let (lock, cvar) = &*self.stop;
        *lock.lock().expect("sync flag lock") = true;
        cvar.notify_one();
        handle.join().map_err(|_| anyhow!("sync thread panicked"))?
    }
}

impl Drop for PeriodicSync {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("kvbench: periodic fsync failed: {e:#}");
        }
    }
}
