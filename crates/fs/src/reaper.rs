//! Frees orphans — files unlinked while open or mapped — once their last reference goes, in a
//! background thread: the final free is a layout change and may wait (lease breaks,
//! revocations), which must not happen inside a `close` or an `munmap`. A final free refused
//! by the policy (`ETXTBSY` under live pins) is retried when those pins go.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::breaking::LayoutReason;
use crate::fs::Shared;
use crate::types::{Caller, Ino};

#[derive(Default)]
struct State {
    pending: BTreeSet<u64>,
    stop: bool,
    running: bool,
}

pub(crate) struct Reaper {
    fs: Weak<Shared>,
    state: Mutex<State>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Reaper {
    pub(crate) fn new(fs: Weak<Shared>) -> Reaper {
        Reaper {
            fs,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        }
    }

    /// Asks for `ino` to be freed if it is an unreferenced orphan.
    pub(crate) fn queue(&self, ino: Ino) {
        let mut st = self.state.lock();
        if st.stop {
            return;
        }
        st.pending.insert(ino.0);
        if !st.running {
            st.running = true;
            let fs = self.fs.clone();
            let h = std::thread::Builder::new()
                .name("pinwheel-reaper".into())
                .spawn(move || run(fs))
                .ok();
            *self.thread.lock() = h;
        }
        self.wake.notify_all();
    }

    /// Waits (up to 10 s) for the queue to empty of orphans that can be freed now.
    pub(crate) fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut st = self.state.lock();
        while !st.pending.is_empty() && Instant::now() < deadline {
            self.wake.notify_all();
            self.wake.wait_for(&mut st, Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
        if let Some(h) = self.thread.lock().take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

fn run(fs: Weak<Shared>) {
    loop {
        let Some(sh) = fs.upgrade() else { return };
        let next = {
            let mut st = sh.reaper.state.lock();
            if st.stop {
                return;
            }
            if st.pending.is_empty() {
                sh.reaper.wake.wait_for(&mut st, Duration::from_millis(200));
            }
            st.pending.pop_first()
        };
        if let Some(ino) = next {
            if !reap(&sh, Ino(ino)) {
                // Still referenced or refused: dropped from the queue; a later close, unmap or
                // pin release queues it again.
            }
            sh.reaper.wake.notify_all();
        }
        drop(sh);
    }
}

/// Tries to free one orphan; true if freed.
fn reap(sh: &Shared, ino: Ino) -> bool {
    let Ok(inode) = sh.inode(ino) else { return false };
    if inode.layout.read().rec.nlink != 0 || sh.busy(&inode) {
        return false;
    }
    match sh.break_layout(&inode, 0..u64::MAX, LayoutReason::Unlink, &Caller::admin()) {
        Ok(guard) => {
            if sh.busy(&inode) {
                return false;
            }
            let r = sh.free_inode(&inode);
            drop(guard);
            if let Err(e) = &r {
                tracing::error!(%ino, error = %e, "freeing an orphan failed");
            }
            r.is_ok()
        }
        Err(e) => {
            tracing::info!(%ino, error = %e, "orphan kept until its pins go");
            false
        }
    }
}
