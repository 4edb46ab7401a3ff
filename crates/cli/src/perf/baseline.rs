//! What `--compare` measures against, side by side with the RDMA run:
//!
//! - loopback: one thread copying the same messages, the same number of times, between the
//!   same two buffers of the pool with the pool's own copy (the fastest a loopback transfer
//!   could be: the engine does this copy plus the verbs work around it);
//! - TCP: a plain TCP connection between the same two processes carrying the same bytes in
//!   the same messages, from a user buffer to a user buffer (the fastest a transport over this
//!   socket could be: the engine adds headers, acknowledgements and the MR checks).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pinwheel::mm::Errno;

use crate::error::CliError;
use crate::perf::host::Buffer;

/// perftest's MB: 2^20 bytes.
const MIB: f64 = 1_048_576.0;

pub(crate) fn rate(size: u64, iters: u64, secs: f64) -> f64 {
    size as f64 * iters as f64 / secs.max(1e-9) / MIB
}

/// Copies `size` bytes from `src` to `dst`, `iters` times; MiB/s.
pub(crate) fn memcpy(src: &Buffer, dst: &Buffer, size: u64, iters: u64) -> Result<f64, CliError> {
    let t0 = Instant::now();
    for _ in 0..iters {
        src.copy_to(dst, size)?;
    }
    Ok(rate(size, iters, t0.elapsed().as_secs_f64()))
}

/// A message buffer of `size` bytes of `fill`; `ENOMEM` (not an abort) if it cannot be had.
fn message(size: u64, fill: u8) -> Result<Vec<u8>, CliError> {
    let n = usize::try_from(size).unwrap_or(usize::MAX);
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| CliError::Refused {
        op: "perf",
        target: format!("-s {size}"),
        errno: Errno::ENOMEM,
        detail: "no memory for the raw TCP baseline's message buffer".into(),
    })?;
    v.resize(n, fill);
    Ok(v)
}

fn io_error(what: &str, target: String) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::Io {
        op: "perf",
        path: target,
        what: format!("raw TCP baseline: {what}"),
        error: e,
    }
}

fn setup(s: &TcpStream, timeout: Duration, target: &str) -> Result<(), CliError> {
    let r = s
        .set_nodelay(true)
        .and_then(|()| s.set_read_timeout(Some(timeout)))
        .and_then(|()| s.set_write_timeout(Some(timeout)));
    r.map_err(io_error("socket options", target.to_string()))
}

/// The client's side: sends `iters` messages of `size` bytes to the server and waits for its
/// one-byte acknowledgement (`to_server`), or sends a one-byte go and receives them. MiB/s,
/// timed from the first byte sent to the last received.
pub(crate) fn raw_client(
    addr: SocketAddr,
    to_server: bool,
    size: u64,
    iters: u64,
    timeout: Duration,
) -> Result<f64, CliError> {
    let target = addr.to_string();
    let s =
        TcpStream::connect_timeout(&addr, timeout).map_err(io_error("connect", target.clone()))?;
    setup(&s, timeout, &target)?;
    let mut buf = message(size, 0xa5)?;
    let mut one = [1u8];
    let t0 = Instant::now();
    if to_server {
        for _ in 0..iters {
            (&s).write_all(&buf).map_err(io_error("send", target.clone()))?;
        }
        (&s).read_exact(&mut one).map_err(io_error("acknowledgement", target.clone()))?;
    } else {
        (&s).write_all(&one).map_err(io_error("send", target.clone()))?;
        for _ in 0..iters {
            (&s).read_exact(&mut buf).map_err(io_error("receive", target.clone()))?;
        }
    }
    Ok(rate(size, iters, t0.elapsed().as_secs_f64()))
}

/// The server's side of [`raw_client`] (`from_client`: the client sends), on the baseline
/// listener (non-blocking), accepting within `timeout`.
pub(crate) fn raw_serve(
    listener: &TcpListener,
    from_client: bool,
    size: u64,
    iters: u64,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let target = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "baseline".into());
    let s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CliError::Refused {
                        op: "perf",
                        target,
                        errno: Errno::ETIMEDOUT,
                        detail: "the client did not open the raw TCP baseline connection".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io_error("accept", target)(e)),
        }
    };
    s.set_nonblocking(false).map_err(io_error("accept", target.clone()))?;
    setup(&s, timeout, &target)?;
    let mut buf = message(size, 0x5a)?;
    let mut one = [1u8];
    if from_client {
        for _ in 0..iters {
            (&s).read_exact(&mut buf).map_err(io_error("receive", target.clone()))?;
        }
        (&s).write_all(&one).map_err(io_error("acknowledge", target.clone()))?;
    } else {
        (&s).read_exact(&mut one).map_err(io_error("wait for go", target.clone()))?;
        for _ in 0..iters {
            (&s).write_all(&buf).map_err(io_error("send", target.clone()))?;
        }
    }
    Ok(())
}
