//! Datagrams with file descriptors and credentials over `AF_UNIX` `SOCK_SEQPACKET` sockets, and
//! the client's request/answer exchange (`call`) described in `proto.rs`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use pinwheel_mm::Errno;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

use crate::limits::{MAX_FDS_PER_MSG, MAX_MSG_BYTES};
use crate::proto::{self, Reply, Request, WireError};

/// A datagram as received.
#[derive(Debug)]
pub struct Received {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
    /// The sending process (when the socket passes credentials).
    pub pid: Option<u32>,
}

/// Sends one datagram with `fds` attached. Never raises SIGPIPE.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if bytes.len() > MAX_MSG_BYTES || fds.len() > MAX_FDS_PER_MSG {
        return Err(std::io::Error::other(format!(
            "message of {} bytes and {} descriptors exceeds {MAX_MSG_BYTES} bytes / \
             {MAX_FDS_PER_MSG} descriptors",
            bytes.len(),
            fds.len()
        )));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("descriptors do not fit the control buffer"));
    }
    let n = loop {
        match sendmsg(sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    if n != bytes.len() {
        return Err(std::io::Error::other("short datagram send"));
    }
    Ok(())
}

/// Receives one datagram (blocking). `Ok(None)` at end of file: every peer has closed.
/// A datagram larger than [`MAX_MSG_BYTES`] or carrying too many descriptors is an error (the
/// descriptors that came with it are closed).
pub fn recv(sock: BorrowedFd<'_>) -> std::io::Result<Option<Received>> {
    let mut buf = vec![0u8; MAX_MSG_BYTES];
    let mut space =
        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)
        {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    let mut pid = None;
    for m in control.drain() {
        match m {
            RecvAncillaryMessage::ScmRights(it) => fds.extend(it),
            RecvAncillaryMessage::ScmCredentials(c) => pid = Some(c.pid.as_raw_nonzero().get()),
            _ => {}
        }
    }
    if got.flags.contains(rustix::net::ReturnFlags::TRUNC)
        || got.flags.contains(rustix::net::ReturnFlags::CTRUNC)
    {
        return Err(std::io::Error::other(format!(
            "a datagram over {MAX_MSG_BYTES} bytes or {MAX_FDS_PER_MSG} descriptors (dropped)"
        )));
    }
    if got.bytes == 0 && fds.is_empty() && hung_up(sock) {
        return Ok(None);
    }
    buf.truncate(got.bytes);
    Ok(Some(Received { bytes: buf, fds, pid: pid.map(|p| p as u32) }))
}

/// True if every peer of `sock` has closed.
pub fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::new(&sock, PollFlags::RDHUP)];
    matches!(poll(&mut p, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(1))
        && p[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP)
}

/// Waits until `sock` is readable (or hung up), up to `timeout`. False on timeout.
pub fn wait_readable(sock: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut p = [PollFd::new(&sock, PollFlags::IN | PollFlags::RDHUP)];
        match poll(&mut p, Some(&ts)) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A `SOCK_SEQPACKET` socket pair (close-on-exec).
pub fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(Errno::EIO, format!("{what}: {e}"))
}

/// Sends `req` on the device handle `handle` with a fresh reply socket and waits up to
/// `timeout` for the answer. Safe to call from any number of threads and processes sharing the
/// handle: each call has its own reply socket.
pub fn call(
    handle: BorrowedFd<'_>,
    req: &Request,
    timeout: Duration,
) -> Result<(Reply, Vec<OwnedFd>), WireError> {
    let bytes = proto::encode(req)?;
    let (mine, theirs) = seqpacket_pair().map_err(|e| io_err("reply socket", e))?;
    send(handle, &bytes, &[theirs.as_fd()]).map_err(|e| match e.raw_os_error() {
        Some(c) if c == libc_epipe() => WireError::new(
            Errno::ENOTCONN,
            "the node daemon closed this handle (it stopped, or the handle was torn down)",
        ),
        _ => io_err("sending the request to the node daemon", e),
    })?;
    drop(theirs);
    if !wait_readable(mine.as_fd(), timeout).map_err(|e| io_err("waiting for the answer", e))? {
        return Err(WireError::new(
            Errno::ETIMEDOUT,
            format!("the node daemon did not answer within {} ms", timeout.as_millis()),
        ));
    }
    let Some(got) = recv(mine.as_fd()).map_err(|e| io_err("reading the answer", e))? else {
        return Err(WireError::new(Errno::ENOTCONN, "the node daemon went away before answering"));
    };
    let reply: Reply = proto::decode(&got.bytes)?;
    match reply {
        Reply::Err(e) => Err(e),
        r => Ok((r, got.fds)),
    }
}

fn libc_epipe() -> i32 {
    rustix::io::Errno::PIPE.raw_os_error()
}

/// Answers a request on its reply socket (errors are logged: the asker may be gone).
pub fn answer(reply_to: &OwnedFd, reply: &Reply, fds: &[BorrowedFd<'_>]) {
    let bytes = match proto::encode(reply) {
        Ok(b) if b.len() <= MAX_MSG_BYTES => b,
        Ok(b) => {
            let e = WireError::new(
                Errno::ERANGE,
                format!("the answer ({} bytes) exceeds {MAX_MSG_BYTES} bytes", b.len()),
            );
            proto::encode(&Reply::Err(e)).unwrap_or_default()
        }
        Err(e) => proto::encode(&Reply::Err(e)).unwrap_or_default(),
    };
    if let Err(e) = send(reply_to.as_fd(), &bytes, fds) {
        tracing::debug!(error = %e, "answer not delivered (the asker is gone)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_passes_bytes_descriptors_and_end_of_file() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, _y) = seqpacket_pair().unwrap();
        send(a.as_fd(), b"hello", &[x.as_fd()]).unwrap();
        let got = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(got.bytes, b"hello");
        assert_eq!(got.fds.len(), 1);
        // An empty datagram is not end of file while the peer lives.
        send(a.as_fd(), b"", &[]).unwrap();
        assert_eq!(recv(b.as_fd()).unwrap().unwrap().bytes, b"");
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn channel_refuses_oversize_datagrams() {
        let (a, _b) = seqpacket_pair().unwrap();
        assert!(send(a.as_fd(), &vec![0u8; MAX_MSG_BYTES + 1], &[]).is_err());
    }
}
