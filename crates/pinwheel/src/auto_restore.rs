//! The helper thread 002 asked for: "How it can be hidden in a RDMA specific library, so the
//! user never sees failed or missed transfers".
//!
//! It reads the context's async events. On `MR_DECOHERENT` it calls `restore_mr`, which drains
//! the MR, releases its old pins (letting the waiting layout change proceed), re-pins the new
//! layout and resumes. There is nothing to quiesce by hand: the engine *holds* every transfer
//! to a decoherent MR (the QP's queue simply waits) and resumes it after the restore, so remote
//! writers see a stall, never an error. Other events go to the application's hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pinwheel_verbs::{AsyncEvent, Context, EventType};

/// What the helper did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoRestoreStats {
    /// MRs restored.
    pub restores: u64,
    /// Restores that failed (the MR is revoked then).
    pub failures: u64,
    /// Longest time from reading `MR_DECOHERENT` to the MR being valid again (µs).
    pub restore_us_max: u64,
}

#[derive(Debug, Default)]
struct Counters {
    restores: AtomicU64,
    failures: AtomicU64,
    restore_us_max: AtomicU64,
}

type Hook = Box<dyn FnMut(&AsyncEvent) + Send>;

/// Restores decoherent MRs of a context in a background thread until dropped.
#[derive(Debug)]
pub struct AutoRestore {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl AutoRestore {
    /// Starts the helper on `ctx`; every event is also passed to `hook` (before restoring).
    pub fn start(ctx: Context, mut hook: impl FnMut(&AsyncEvent) + Send + 'static) -> AutoRestore {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (s, c) = (Arc::clone(&stop), Arc::clone(&counters));
        let mut hook: Hook = Box::new(move |e| hook(e));
        let thread = std::thread::Builder::new()
            .name("pinwheel-auto-restore".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    let Some(ev) = ctx.get_async_event(Duration::from_millis(20)) else { continue };
                    hook(&ev);
                    if ev.kind != EventType::MrDecoherent {
                        continue;
                    }
                    let Some(lkey) = ev.mr else { continue };
                    let t = Instant::now();
                    match ctx.restore_mr(lkey) {
                        Ok(()) => {
                            c.restores.fetch_add(1, Ordering::Relaxed);
                            c.restore_us_max
                                .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(%lkey, error = %e, "restore_mr failed");
                            c.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .ok();
        AutoRestore { stop, counters, thread }
    }

    /// What it did so far.
    pub fn stats(&self) -> AutoRestoreStats {
        let c = &self.counters;
        AutoRestoreStats {
            restores: c.restores.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            restore_us_max: c.restore_us_max.load(Ordering::Relaxed),
        }
    }
}

impl Drop for AutoRestore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
