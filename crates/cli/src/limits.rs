//! Every limit of the command-line tool, each with the reason for its value.

/// Bytes moved per filesystem call by `write` and `read`: large enough that a copy of a big
/// file takes few layout changes, small enough that the buffer is not a memory problem.
pub const IO_CHUNK_BYTES: usize = 1 << 20;

/// Deepest path error hints walk when looking for the missing component: a path of
/// `PATH_MAX` bytes has at most half as many components.
pub const HINT_DEPTH_MAX: usize = pinwheel_fs::limits::PATH_MAX / 2;
