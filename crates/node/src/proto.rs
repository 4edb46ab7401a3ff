//! The control protocol between `pinwheel serve` and the processes using it.
//!
//! Transport: an `AF_UNIX` `SOCK_SEQPACKET` connection to the node's socket *is* the device
//! handle. Every request is one datagram on it, carrying in `SCM_RIGHTS` the sending end of a
//! fresh reply socket; the daemon answers on that socket and closes it. So any process holding a
//! copy of the handle (inherited across `fork`, received by `SCM_RIGHTS`) can use it at the same
//! time as the others, answers never cross, and the daemon holds no copy of the client's end:
//! when the last copy closes anywhere, the daemon's end reads end-of-file and the handle's
//! objects are destroyed. The kernel attaches the sender's credentials (`SCM_CREDENTIALS`) to
//! each datagram, so the daemon knows which process asked.
//!
//! Encoding: [`postcard`] of [`Envelope`]; the version is checked first. A datagram the decoder
//! rejects gets an `EPROTO`-style error answer (if it carried a reply socket) and changes
//! nothing. Every length in a request is checked against `limits.rs` before use.

use serde::{Deserialize, Serialize};

use pinwheel_fs::{
    DefragReport, DirEntry, Extent, FilePinInfo, FsStats, FsckReport, LeaseInfo, Stat,
};
use pinwheel_mm::Errno;

/// Protocol version; a client of another version is refused at `Hello`.
pub const VERSION: u16 = 1;

/// One datagram.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// [`VERSION`].
    pub version: u16,
    /// The message.
    pub body: T,
}

/// An object of a handle: index and generation, so a stale id fails lookup.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjId(pub u32);

impl std::fmt::Display for ObjId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}.{}", self.0 & 0xf_ffff, self.0 >> 20)
    }
}

/// A scatter/gather element (virtual address of the handle's address space).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireSge {
    /// Address.
    pub addr: u64,
    /// Bytes.
    pub length: u32,
    /// Local key.
    pub lkey: u32,
}

/// A send work request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireSendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// `write`, `write_imm`, `send`, `send_imm`, `read`, `cas`, `faa`.
    pub opcode: u8,
    /// Local buffers.
    pub sg_list: Vec<WireSge>,
    /// Target address.
    pub remote_addr: u64,
    /// Target key.
    pub rkey: u32,
    /// Immediate data.
    pub imm: u32,
    /// CAS compare / FAA addend.
    pub compare_add: u64,
    /// CAS swap.
    pub swap: u64,
    /// Completion on success.
    pub signaled: bool,
    /// Inline data.
    pub inline_data: Option<Vec<u8>>,
}

/// A receive work request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireRecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Buffers.
    pub sg_list: Vec<WireSge>,
}

/// A work completion.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireWc {
    /// The work request.
    pub wr_id: u64,
    /// `ibv_wc_status` value.
    pub status: u8,
    /// `ibv_wc_opcode` value.
    pub opcode: u8,
    /// Bytes transferred.
    pub byte_len: u32,
    /// Immediate data.
    pub imm: Option<u32>,
    /// Local QP number.
    pub qpn: u32,
}

/// An async event.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireEvent {
    /// `MR_DECOHERENT`, `LEASE_RECALLED`, ... (the verbs name).
    pub kind: String,
    /// The MR (lkey).
    pub mr: Option<u32>,
    /// The QP.
    pub qpn: Option<u32>,
    /// The lease.
    pub lease: Option<u64>,
    /// The file.
    pub ino: Option<u64>,
    /// For people.
    pub detail: String,
}

/// What an MR is registered over.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MrTarget {
    /// Virtual memory of the handle's address space (a buffer or a file mapping).
    Memory {
        /// First byte.
        addr: u64,
        /// Bytes.
        len: u64,
        /// On-demand paging instead of pins.
        on_demand: bool,
    },
    /// A file range (file MR).
    File {
        /// An open file of this handle.
        file: ObjId,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// QP creation attributes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireQpInit {
    /// Send CQ.
    pub send_cq: ObjId,
    /// Receive CQ.
    pub recv_cq: ObjId,
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per work request.
    pub max_sge: u32,
    /// Inline bytes.
    pub max_inline_data: u32,
}

/// Layout lease kinds as the protocol names them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireLease {
    /// Breakable read layout lease.
    Read,
    /// Breakable write layout lease.
    Write,
    /// Write lease + fallocate + downgrade to unbreakable (seal).
    Unbreakable,
}

/// Filesystem operations an administrator runs against the live node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// `stat(path)`.
    Stat { path: String },
    /// `stat` by inode.
    StatIno { ino: u64 },
    /// Directory entries.
    Readdir { path: String },
    /// Path to inode.
    Lookup { path: String },
    /// Extents of a file.
    Extents { ino: u64 },
    /// Create a file.
    Create { path: String, page_cache: bool },
    /// Write bytes.
    Write { ino: u64, offset: u64, data: Vec<u8> },
    /// Read bytes.
    Read { ino: u64, offset: u64, len: u32 },
    /// fallocate: 0 allocate, 1 allocate keep size, 2 zero range, 3 punch hole.
    Fallocate { ino: u64, offset: u64, len: u64, mode: u8 },
    /// Set the size.
    Truncate { ino: u64, size: u64 },
    /// Reflink copy.
    Clone { src: String, dst: String },
    /// Migrate every extent.
    Defrag { ino: u64, huge: bool },
    /// Remove a file.
    Unlink { path: String },
    /// Remove an empty directory.
    Rmdir { path: String },
    /// Rename.
    Rename { from: String, to: String },
    /// Make a directory.
    Mkdir { path: String },
    /// Space and inode counts.
    Stats,
    /// Check the mounted filesystem.
    Fsck,
}

/// Admin views.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminQuery {
    /// Long-term file pins with their holders.
    Pins,
    /// Layout leases.
    Leases,
    /// Memory regions.
    Mrs,
    /// Handles, the processes holding them, their objects; node counters.
    Ps,
}

/// A request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// First request of a process on a handle: its label; answered with [`Reply::Welcome`] and
    /// the pool's file descriptor.
    Hello {
        /// Command name, for messages.
        label: String,
    },
    /// A protection domain.
    AllocPd,
    /// Frees a PD (its MRs and QPs must be gone).
    DeallocPd { pd: ObjId },
    /// Anonymous memory of `len` bytes in the handle's address space, populated.
    Alloc { len: u64 },
    /// Frees a buffer.
    Free { buf: ObjId },
    /// Maps a file range into the handle's address space.
    MapFile {
        /// Path.
        path: String,
        /// First byte (page aligned).
        offset: u64,
        /// Bytes.
        len: u64,
        /// Writable.
        write: bool,
    },
    /// Removes a mapping.
    Unmap { map: ObjId },
    /// Registers the calling process's notification socket (attached as a second descriptor):
    /// invalidations of its file mappings arrive there as [`Notice`]s to acknowledge.
    RegisterNotify,
    /// The frame behind page `page` of mapping `map`, faulted as a load or a store would
    /// (beyond the end of the file: `EFAULT`, which the client turns into SIGBUS).
    Fault { map: ObjId, page: u64, write: bool },
    /// Reads `len` bytes at a virtual address of the handle's address space (faulting as a
    /// load would; beyond EOF is `EFAULT`, the SIGBUS of a real mapping).
    Load { addr: u64, len: u32 },
    /// Writes bytes at a virtual address (faulting as a store would).
    Store { addr: u64, data: Vec<u8> },
    /// The frames behind `[addr, addr + len)` of a buffer: (pool offset, bytes) runs.
    Frames { addr: u64, len: u64 },
    /// Registers an MR.
    RegMr { pd: ObjId, target: MrTarget, access: u32 },
    /// Deregisters.
    DeregMr { mr: ObjId },
    /// `restore_mr`.
    RestoreMr { mr: ObjId },
    /// A CQ.
    CreateCq { depth: u32 },
    /// Destroys a CQ (its QPs must be gone).
    DestroyCq { cq: ObjId },
    /// An RC QP (brought to INIT).
    CreateQp { pd: ObjId, init: WireQpInit },
    /// Connects a QP to another QP of this node, by number, and brings both to RTS.
    ConnectQp { qp: ObjId, peer_qpn: u32, access: u32 },
    /// Connects a new QP to a remote node over TCP (`host:port` of its `--listen`).
    ConnectTcp { pd: ObjId, init: WireQpInit, addr: String, access: u32, private: Vec<u8> },
    /// Accepts the next TCP connection from a remote node on the daemon's `--listen` address
    /// onto a new QP (waiting up to `wait_ms`).
    Accept { pd: ObjId, init: WireQpInit, access: u32, private: Vec<u8>, wait_ms: u32 },
    /// Moves a QP to ERR.
    QpToError { qp: ObjId },
    /// Destroys a QP.
    DestroyQp { qp: ObjId },
    /// Posts send work requests.
    PostSend { qp: ObjId, wrs: Vec<WireSendWr> },
    /// Posts receive work requests.
    PostRecv { qp: ObjId, wrs: Vec<WireRecvWr> },
    /// Polls up to `max` completions, waiting up to `wait_ms` for the first.
    PollCq { cq: ObjId, max: u32, wait_ms: u32 },
    /// The next async event of the handle, waiting up to `wait_ms`.
    GetEvent { wait_ms: u32 },
    /// Opens a file (creating it when asked).
    OpenFile { path: String, create: bool },
    /// Closes it (dropping its lease).
    CloseFile { file: ObjId },
    /// Takes a layout lease on an open file (recalls reach the handle's events).
    SetLease { file: ObjId, kind: WireLease },
    /// Releases it.
    ReleaseLease { file: ObjId },
    /// A filesystem operation, as the handle's owner.
    Fs(FsOp),
    /// An admin view.
    Admin(AdminQuery),
    /// Exports an MR or PD of this handle for another handle to import; answers a token.
    Export { obj: ObjId },
    /// Imports an exported object into this handle.
    Import { token: u64 },
    /// Where a CQ's ring or a QP's slot is in the device region (a client that executes its
    /// work itself, `docs/shm.md`); answered with [`Reply::ShmObject`].
    ShmAttach { obj: ObjId },
    /// What a client executing its work itself cannot do alone (error paths and faults only).
    ShmReport(ShmReport),
}

/// Reports of a client executing its work through the shared tables.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ShmReport {
    /// The peer (a QP of this node) of the handle's QP `qp` failed a responder check: it goes
    /// to ERR with `QP_ACCESS_ERR`. `status` is the responder's (`ibv_wc_status` value).
    ResponderError { qp: ObjId, status: u8 },
    /// A completion could not be queued on the send (or receive) CQ of QP `qpn`: `CQ_ERR` on
    /// its handle, if the CQ's ring says it overflowed.
    CqOverflow { qpn: u32, recv: bool },
    /// Bytes `[off, off + len)` of the ODP or file MR `key` were absent from its translation
    /// table: fault them in.
    Fault { key: u32, off: u64, len: u64, write: bool },
}

/// Node facts a new client needs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The node's name (device name).
    pub node: String,
    /// Pool size in bytes (the pool fd comes with the answer).
    pub pool_size: u64,
    /// The handle's number (as admin views and error messages name it).
    pub handle: u64,
    /// The pin policy.
    pub policy: String,
    /// Lease-break time.
    pub lease_break_ms: u64,
    /// Pool offset of the device region (the MR and QP tables), if the node has one: clients
    /// then post, poll and execute transfers to QPs of this node without asking the daemon.
    /// Last, so a client of before it decodes the rest.
    pub region: Option<u64>,
}

/// An MR as registered.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireMr {
    /// Object id in the handle.
    pub id: ObjId,
    /// Local key.
    pub lkey: u32,
    /// Remote key.
    pub rkey: u32,
    /// First address.
    pub addr: u64,
    /// Length.
    pub len: u64,
}

/// A QP as created.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireQp {
    /// Object id in the handle.
    pub id: ObjId,
    /// QP number.
    pub qpn: u32,
}

/// One long-term pin, with who holds it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PinView {
    /// The pin.
    pub pin: FilePinInfo,
}

/// An MR in the node-wide view.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MrView {
    /// Local key.
    pub lkey: u32,
    /// Remote key.
    pub rkey: u32,
    /// `pinned`, `odp`, `file`.
    pub kind: String,
    /// `valid`, `decoherent`, `revoked`.
    pub state: String,
    /// First address (file offset for file MRs).
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// The file of a file MR.
    pub ino: Option<u64>,
    /// Pages translated now.
    pub resident_pages: u64,
    /// Restores so far.
    pub restores: u64,
    /// Device handle.
    pub handle: u64,
    /// Processes holding the handle: (pid, command).
    pub processes: Vec<(u32, String)>,
}

/// Objects of one handle.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectCounts {
    /// Protection domains.
    pub pds: u64,
    /// Memory regions.
    pub mrs: u64,
    /// Completion queues.
    pub cqs: u64,
    /// Queue pairs.
    pub qps: u64,
    /// Buffers.
    pub buffers: u64,
    /// File mappings.
    pub mappings: u64,
    /// Open files.
    pub files: u64,
    /// Leases held.
    pub leases: u64,
    /// Objects imported from other handles.
    pub imported: u64,
}

/// A handle in `pinwheel ps`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HandleView {
    /// Handle number.
    pub handle: u64,
    /// The label given at `Hello`.
    pub label: String,
    /// Processes holding it now: (pid, command).
    pub processes: Vec<(u32, String)>,
    /// Its objects.
    pub objects: ObjectCounts,
}

/// `pinwheel ps`: every handle and the node's totals.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PsView {
    /// Handles.
    pub handles: Vec<HandleView>,
    /// Sum over the handles.
    pub totals: ObjectCounts,
    /// Long-term file pins on the node.
    pub file_pins: u64,
    /// Layout leases on the node.
    pub leases: u64,
    /// Pages pinned (frame pin counts) on the node.
    pub pinned_pages: u64,
    /// Frames quarantined (held back from reuse for clients that did not let go).
    pub quarantined_frames: u64,
}

/// An answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done, nothing to return.
    Ok,
    /// The error, as an errno and a message naming the culprit.
    Err(WireError),
    /// Answer to `Hello` (the pool fd is attached).
    Welcome(Welcome),
    /// A new object.
    Created(ObjId),
    /// A buffer or mapping: its id and virtual address.
    Mapped { id: ObjId, addr: u64 },
    /// Bytes.
    Data(Vec<u8>),
    /// Frames: (pool offset, bytes).
    Frames(Vec<(u64, u64)>),
    /// A registered MR.
    Mr(WireMr),
    /// A QP (and the peer's private data for TCP connections).
    Qp { qp: WireQp, private: Vec<u8> },
    /// Completions.
    Completions(Vec<WireWc>),
    /// An event, or none within the wait.
    Event(Option<WireEvent>),
    /// `stat`.
    Stat(Stat),
    /// Directory entries.
    Entries(Vec<DirEntry>),
    /// An inode number.
    Ino(u64),
    /// Extents.
    Extents(Vec<Extent>),
    /// Bytes written.
    Written(u64),
    /// Defragmentation report.
    Defrag(DefragReport),
    /// Filesystem counts.
    Stats(FsStats),
    /// fsck report.
    Fsck(FsckReport),
    /// Pins.
    Pins(Vec<PinView>),
    /// Leases.
    Leases(Vec<LeaseInfo>),
    /// MRs.
    Mrs(Vec<MrView>),
    /// Handles.
    Ps(PsView),
    /// An export token.
    Token(u64),
    /// The frame behind a mapped page, as of invalidation `seq` of its mapping.
    Frame {
        /// Pool offset of the frame.
        offset: u64,
        /// Invalidations of the mapping so far: a client that has since acknowledged a later
        /// one must not install this frame.
        seq: u64,
        /// Mapped writable (a store fault was served).
        writable: bool,
    },
    /// Answer to [`Request::ShmAttach`]: a QP's slot in the QP table (0 for a CQ), a CQ's ring
    /// (pool offset; 0 for a QP).
    ShmObject { slot: u32, ring: u64 },
}

/// A message from the daemon on a process's notification socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Stop using pages `[first_page, first_page + pages)` of mapping `map` (unmap them), then
    /// answer [`NoticeAck`] with `seq`. The daemon holds the layout change until then.
    Invalidate {
        /// The mapping.
        map: ObjId,
        /// First page.
        first_page: u64,
        /// Pages.
        pages: u64,
        /// The mapping's invalidation number.
        seq: u64,
    },
}

/// A process's answer to a [`Notice`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeAck {
    /// The notice's `seq`.
    pub seq: u64,
}

/// An error as it crosses the socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The errno (by name: stable across kernels and architectures).
    pub errno: String,
    /// What failed, why, who holds it.
    pub message: String,
}

impl WireError {
    /// An error with `errno`.
    pub fn new(errno: Errno, message: impl Into<String>) -> WireError {
        WireError { errno: errno.name().to_string(), message: message.into() }
    }
    /// The errno (`EIO` for a name this build does not know).
    pub fn errno(&self) -> Errno {
        Errno::from_name(&self.errno).unwrap_or(Errno::EIO)
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// Encodes a message.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(&Envelope { version: VERSION, body })
        .map_err(|e| WireError::new(Errno::EINVAL, format!("encoding a message: {e}")))
}

/// Decodes a message, checking the version.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    // The version is the first field: check it alone, so another version's layout is never
    // misread as this one's.
    let (version, _): (u16, _) = postcard::take_from_bytes(bytes)
        .map_err(|e| WireError::new(Errno::EPROTO, format!("malformed message: {e}")))?;
    if version != VERSION {
        return Err(WireError::new(
            Errno::EPROTO,
            format!("protocol version {version}, this side speaks {VERSION}"),
        ));
    }
    let env: Envelope<T> = postcard::from_bytes(bytes)
        .map_err(|e| WireError::new(Errno::EPROTO, format!("malformed message: {e}")))?;
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_round_trips_and_rejects_other_versions() {
        let r = Request::RegMr {
            pd: ObjId(3),
            target: MrTarget::Memory { addr: 0x1000, len: 8192, on_demand: false },
            access: 15,
        };
        let b = encode(&r).unwrap();
        assert_eq!(decode::<Request>(&b).unwrap(), r);
        let mut other = b.clone();
        other[0] = 9;
        assert_eq!(decode::<Request>(&other).unwrap_err().errno(), Errno::EPROTO);
        assert_eq!(decode::<Request>(&[]).unwrap_err().errno(), Errno::EPROTO);
        assert_eq!(decode::<Request>(&b[..b.len() - 1]).unwrap_err().errno(), Errno::EPROTO);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn valid_requests() -> Vec<Vec<u8>> {
        let reqs = [
            Request::Hello { label: "x".into() },
            Request::AllocPd,
            Request::RegMr {
                pd: ObjId(1 << 20),
                target: MrTarget::File { file: ObjId(2), offset: 4096, len: 8192 },
                access: 7,
            },
            Request::PostSend {
                qp: ObjId(5),
                wrs: vec![WireSendWr {
                    wr_id: 1,
                    opcode: 0,
                    sg_list: vec![WireSge { addr: 1, length: 2, lkey: 3 }],
                    remote_addr: 4,
                    rkey: 5,
                    imm: 6,
                    compare_add: 7,
                    swap: 8,
                    signaled: true,
                    inline_data: Some(vec![1, 2, 3]),
                }],
            },
            Request::Fs(FsOp::Write { ino: 3, offset: 9, data: vec![0; 100] }),
            Request::Admin(AdminQuery::Ps),
            Request::ShmAttach { obj: ObjId(7) },
            Request::ShmReport(ShmReport::Fault { key: 0x105, off: 4096, len: 8, write: true }),
        ];
        reqs.iter().map(|r| encode(r).expect("encodes")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the decoder: a request or an error.
        #[test]
        fn proto_decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Reply>(&bytes);
            // Past the version check too: the right version, then garbage.
            let mut v = encode(&0u8).expect("encodes");
            v.truncate(1);
            v.extend_from_slice(&bytes);
            let _ = decode::<Request>(&v);
            let _ = decode::<Reply>(&v);
        }

        /// Valid requests with bytes flipped, cut or extended: never a panic, and a huge
        /// length prefix never makes the decoder allocate it.
        #[test]
        fn proto_decoder_survives_mutated_requests(
            which in 0usize..8,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut b = valid_requests()[which].clone();
            for (at, x) in flips {
                let n = b.len();
                b[at % n] ^= x;
            }
            b.truncate(cut % (b.len() + 1));
            b.extend_from_slice(&tail);
            let _ = decode::<Request>(&b);
        }
    }
}
