//! The connection manager of the TCP transport (the rdma_cm role): exchange QPN, starting PSN
//! and up to 256 bytes of private data in HELLOs, then move the new QP through INIT and RTR to
//! RTS over a [`Link`] whose reader thread (`tcp.rs`) runs the connection. A failed handshake
//! leaves no QP behind (the QP it created is dropped, which closes the socket).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::ProtectionDomain;
use crate::device::Device;
use crate::error::{VerbsError, VerbsResult};
use crate::limits::WIRE_STALL_MS;
use crate::qp::{AddressHandle, QpAttr, QpInitAttr, QueuePair};
use crate::transport::tcp::{self, Link};
use crate::transport::wire::{HEADER, Header, Hello, Kind};
use crate::types::{Access, Psn, QpState, Qpn};

fn setup_socket(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(WIRE_STALL_MS)))?;
    s.set_write_timeout(Some(Duration::from_millis(WIRE_STALL_MS)))?;
    Ok(())
}

fn handshake(stream: &TcpStream, mine: &Hello, deadline: Instant) -> Result<Hello, String> {
    stream
        .set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .map_err(|e| e.to_string())?;
    (&*stream).write_all(&mine.encode()).map_err(|e| format!("sending hello: {e}"))?;
    let mut hb = [0u8; HEADER];
    (&*stream).read_exact(&mut hb).map_err(|e| format!("reading hello: {e}"))?;
    let h = Header::decode(&hb)?;
    if h.kind != Kind::Hello {
        return Err(format!("expected HELLO, got {:?}", h.kind));
    }
    let mut body = vec![0u8; h.len as usize];
    (&*stream).read_exact(&mut body).map_err(|e| format!("reading hello: {e}"))?;
    Hello::decode(&body)
}

fn establish(
    qp: &QueuePair,
    stream: TcpStream,
    remote: Hello,
    access: Access,
    psn: u32,
) -> VerbsResult<()> {
    setup_socket(&stream).map_err(|e| VerbsError::io("socket options", &e))?;
    let link = Link::new(stream, &qp.0, remote.qpn, remote.name.clone(), psn)
        .map_err(|e| VerbsError::io("peer address", &e))?;
    let link = Arc::new(link);
    let init = QpAttr { qp_state: QpState::Init, qp_access_flags: access, ..QpAttr::default() };
    qp.step(QpState::Reset, &init)?;
    let rtr = QpAttr {
        qp_state: QpState::Rtr,
        dest_qp_num: Qpn(remote.qpn),
        rq_psn: Psn(remote.psn),
        ah: AddressHandle::Remote(Arc::clone(&link)),
        ..QpAttr::default()
    };
    qp.step(QpState::Init, &rtr)?;
    qp.step(
        QpState::Rtr,
        &QpAttr { qp_state: QpState::Rts, sq_psn: Psn(psn), ..QpAttr::default() },
    )?;
    // The reader starts once the QP is in RTS: a peer that hangs up right after the
    // handshake (a server refusing the private data) is a disconnect of an established
    // connection, as with rdma_cm, not a failed RTR -> RTS transition of a QP the reader
    // already moved to ERR. What the peer sends meanwhile waits in the socket.
    tcp::spawn_reader(&link, qp.0.qpn).map_err(|e| VerbsError::io("reader thread", &e))?;
    Ok(())
}

/// Listens for connections from other nodes.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    dev: Device,
}

impl Device {
    /// Listens on `addr` (`host:port`; port 0 picks one).
    pub fn listen(&self, addr: &str) -> VerbsResult<Listener> {
        let listener =
            TcpListener::bind(addr).map_err(|e| VerbsError::io(format!("listen on {addr}"), &e))?;
        listener.set_nonblocking(true).map_err(|e| VerbsError::io("listen", &e))?;
        Ok(Listener { listener, dev: self.clone() })
    }
}

impl Listener {
    /// The address listened on.
    pub fn local_addr(&self) -> VerbsResult<SocketAddr> {
        self.listener.local_addr().map_err(|e| VerbsError::io("local address", &e))
    }

    /// Accepts one connection within `timeout`: creates a QP in `pd`, exchanges HELLOs (the
    /// peer's private data is returned, `private` is sent), and brings the QP to RTS.
    pub fn accept(
        &self,
        pd: &ProtectionDomain,
        init: QpInitAttr,
        access: Access,
        private: &[u8],
        timeout: Duration,
    ) -> VerbsResult<(QueuePair, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(VerbsError::TimedOut("accept".into()));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(VerbsError::io("accept", &e)),
            }
        };
        stream.set_nonblocking(false).map_err(|e| VerbsError::io("accept", &e))?;
        let qp = pd.create_qp(init)?;
        let psn = 1;
        let mine =
            Hello { qpn: qp.0.qpn, psn, name: self.dev.0.name.clone(), private: private.to_vec() };
        let remote = handshake(&stream, &mine, deadline).map_err(|e| VerbsError::Transport {
            what: format!("accept: {e}"),
            errno: pinwheel_mm::Errno::EPROTO,
        })?;
        establish(&qp, stream, remote.clone(), access, psn)?;
        Ok((qp, remote.private))
    }
}

impl ProtectionDomain {
    /// Connects to a listening node: creates a QP, exchanges HELLOs (sending `private`,
    /// returning the peer's), and brings the QP to RTS.
    pub fn connect(
        &self,
        addr: &str,
        init: QpInitAttr,
        access: Access,
        private: &[u8],
        timeout: Duration,
    ) -> VerbsResult<(QueuePair, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| VerbsError::io(format!("resolve {addr}"), &e))?
            .next()
            .ok_or_else(|| VerbsError::invalid(format!("{addr}: no address")))?;
        let stream = TcpStream::connect_timeout(&sa, timeout)
            .map_err(|e| VerbsError::io(format!("connect {addr}"), &e))?;
        let qp = self.create_qp(init)?;
        let psn = 1;
        let mine = Hello {
            qpn: qp.0.qpn,
            psn,
            name: self.0.ctx.dev.name.clone(),
            private: private.to_vec(),
        };
        let remote = handshake(&stream, &mine, deadline).map_err(|e| VerbsError::Transport {
            what: format!("connect {addr}: {e}"),
            errno: pinwheel_mm::Errno::EPROTO,
        })?;
        establish(&qp, stream, remote.clone(), access, psn)?;
        Ok((qp, remote.private))
    }
}
