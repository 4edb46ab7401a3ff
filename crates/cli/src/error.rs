//! Errors of the command-line tool: one enum, each variant naming the operation and what it
//! acted on, and one `errno()` mapping. `main` prints them as
//! `pinwheel: <op> <target>: <strerror> (<ERRNAME>): <detail>` (STYLE: messages an operator
//! can act on) and exits non-zero.

use std::fmt;
use std::io;

use pinwheel::VerbsError;
use pinwheel::node::NodeError;
use pinwheel_fs::FsError;
use pinwheel_mm::{Errno, MmError};

/// What a filesystem operation answered, whether the filesystem is mounted here
/// (`--pool`) or served by a daemon (`--socket`): the errno and the message naming the
/// culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The errno.
    pub errno: Errno,
    /// The filesystem's message.
    pub message: String,
}

impl From<FsError> for Failure {
    fn from(e: FsError) -> Failure {
        let message = match &e {
            FsError::Mm(MmError::InvalidArgument(m)) => m.clone(),
            e => e.to_string(),
        };
        Failure { errno: e.errno(), message }
    }
}

impl From<pinwheel::client::Error> for Failure {
    fn from(e: pinwheel::client::Error) -> Failure {
        Failure { errno: e.errno(), message: e.message().to_string() }
    }
}

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// A filesystem operation failed.
    Fs {
        /// The operation (`stat`, `write`, `mount`, ...).
        op: &'static str,
        /// The paths (or pool file) it acted on.
        paths: Vec<String>,
        /// What the filesystem answered.
        error: Failure,
        /// A better explanation than the error's own text, when the tool could find one (which
        /// component of a path is missing, what to run next).
        hint: Option<String>,
    },
    /// A verbs operation of the software RDMA device failed (registration, connection setup,
    /// a queue pair).
    Verbs {
        /// The operation (`perf`, `devinfo`, ...).
        op: &'static str,
        /// What it acted on (a test, a server address).
        target: String,
        /// What the device answered (boxed: it is large, and errors travel in every `Result`).
        error: Box<VerbsError>,
        /// What to do about it, when the tool knows better than the error's own text.
        hint: Option<String>,
    },
    /// Opening, creating or mapping the pool failed.
    Pool {
        /// The operation.
        op: &'static str,
        /// The pool file.
        path: String,
        /// What the memory core answered.
        error: MmError,
    },
    /// Local file or terminal I/O failed (`--from`, `--to`, stdout, the pool file's lock).
    Io {
        /// The operation.
        op: &'static str,
        /// The local file.
        path: String,
        /// What failed.
        what: String,
        /// The OS error.
        error: io::Error,
    },
    /// The request cannot be carried out as asked (found after parsing the command line).
    Refused {
        /// The operation.
        op: &'static str,
        /// What it acted on.
        target: String,
        /// The errno it maps to.
        errno: Errno,
        /// Why.
        detail: String,
    },
    /// fsck found damage; the report was printed.
    Damaged {
        /// The pool file.
        path: String,
        /// Errors found.
        errors: usize,
    },
}

/// Removes a leading `"<prefix>: "` from `msg` when `prefix` is one of `names`: the filesystem's
/// messages start with the path, which the tool already printed.
fn strip_name<'a>(msg: &'a str, names: &[String]) -> &'a str {
    names
        .iter()
        .find_map(|n| msg.strip_prefix(n.as_str()).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or(msg)
}

impl CliError {
    /// A filesystem error of `op` on `paths`.
    pub fn fs(op: &'static str, paths: &[&str], error: impl Into<Failure>) -> CliError {
        CliError::Fs {
            op,
            paths: paths.iter().map(|p| (*p).to_string()).collect(),
            error: error.into(),
            hint: None,
        }
    }

    /// A local I/O error.
    pub fn io(
        op: &'static str,
        path: impl Into<String>,
        what: impl Into<String>,
        error: io::Error,
    ) -> CliError {
        CliError::Io { op, path: path.into(), what: what.into(), error }
    }

    /// A verbs error of `op` on `target`.
    pub fn verbs(op: &'static str, target: impl Into<String>, error: VerbsError) -> CliError {
        CliError::Verbs { op, target: target.into(), error: Box::new(error), hint: None }
    }

    /// Building a node (pool, filesystem, device) for `op` failed.
    pub fn node(op: &'static str, target: impl Into<String>, error: NodeError) -> CliError {
        match error {
            NodeError::Pool(error) => CliError::Pool { op, path: target.into(), error },
            NodeError::Fs(error) => {
                CliError::Fs { op, paths: vec![target.into()], error: error.into(), hint: None }
            }
        }
    }

    /// An `EINVAL` refusal.
    pub fn invalid(
        op: &'static str,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> CliError {
        CliError::Refused { op, target: target.into(), errno: Errno::EINVAL, detail: detail.into() }
    }

    /// Adds a hint (replacing the error's own text as the detail).
    pub fn with_hint(mut self, new: Option<String>) -> CliError {
        if let CliError::Fs { hint, .. } | CliError::Verbs { hint, .. } = &mut self
            && new.is_some()
        {
            *hint = new;
        }
        self
    }

    /// The errno this error maps to.
    pub fn errno(&self) -> Errno {
        match self {
            CliError::Fs { error, .. } => error.errno,
            CliError::Verbs { error, .. } => error.errno(),
            CliError::Pool { error, .. } => error.errno(),
            CliError::Io { error, .. } => Errno::from(error),
            CliError::Refused { errno, .. } => *errno,
            CliError::Damaged { .. } => Errno::EUCLEAN,
        }
    }

    /// True if stdout went away (`pinwheel ... | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { error, .. } if error.kind() == io::ErrorKind::BrokenPipe)
    }

    fn op(&self) -> &str {
        match self {
            CliError::Fs { op, .. }
            | CliError::Verbs { op, .. }
            | CliError::Pool { op, .. }
            | CliError::Io { op, .. }
            | CliError::Refused { op, .. } => op,
            CliError::Damaged { .. } => "fsck",
        }
    }

    fn target(&self) -> String {
        match self {
            CliError::Fs { paths, .. } => paths.join(" "),
            CliError::Pool { path, .. }
            | CliError::Io { path, .. }
            | CliError::Damaged { path, .. } => path.clone(),
            CliError::Refused { target, .. } | CliError::Verbs { target, .. } => target.clone(),
        }
    }

    fn detail(&self) -> String {
        match self {
            CliError::Fs { hint: Some(h), .. } => h.clone(),
            CliError::Fs { op, paths, error, .. } => {
                // The filesystem's layout-change messages start with "<op> <path>: " too.
                let m = paths
                    .iter()
                    .find_map(|p| error.message.strip_prefix(&format!("{op} {p}: ")))
                    .unwrap_or(&error.message);
                strip_name(m, paths).to_string()
            }
            CliError::Verbs { hint: Some(h), .. } => h.clone(),
            // The transport's text repeats the errno: keep what failed.
            CliError::Verbs { target, error, .. } => match &**error {
                VerbsError::Transport { what, .. } => {
                    strip_name(what, std::slice::from_ref(target)).to_string()
                }
                e => strip_name(&e.to_string(), std::slice::from_ref(target)).to_string(),
            },
            CliError::Pool { path, error, .. } => match error {
                MmError::PoolSetup { what, .. } => format!("{what} of the pool file failed"),
                MmError::InvalidArgument(m) => {
                    strip_name(m, std::slice::from_ref(path)).to_string()
                }
                other => other.to_string(),
            },
            CliError::Io { what, .. } => what.clone(),
            CliError::Refused { detail, .. } => detail.clone(),
            CliError::Damaged { errors, .. } => {
                format!("fsck found {errors} error(s), listed in its report")
            }
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}: {}", self.op(), self.target(), self.errno(), self.detail())
    }
}

impl std::error::Error for CliError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_format_strips_repeated_path() {
        let e = CliError::fs("mkdir", &["/a"], FsError::Exists { path: "/a".into() });
        assert_eq!(e.to_string(), "mkdir /a: File exists (EEXIST): already exists");
    }

    #[test]
    fn error_hint_replaces_detail() {
        let e = CliError::fs("stat", &["/nope"], FsError::NotFound { path: "/nope".into() })
            .with_hint(Some("no entry \"nope\" in /".into()));
        assert_eq!(
            e.to_string(),
            "stat /nope: No such file or directory (ENOENT): no entry \"nope\" in /"
        );
    }

    #[test]
    fn error_verbs_transport_names_what_failed_once() {
        let e = CliError::verbs(
            "perf",
            "10.0.0.1:18515",
            VerbsError::Transport {
                what: "connect 10.0.0.1:18515".into(),
                errno: Errno::ECONNREFUSED,
            },
        );
        assert_eq!(
            e.to_string(),
            "perf 10.0.0.1:18515: Connection refused (ECONNREFUSED): connect 10.0.0.1:18515"
        );
    }

    #[test]
    fn error_errno_table() {
        let io = || io::Error::from_raw_os_error(Errno::ENOENT.code());
        let t: Vec<(CliError, Errno)> = vec![
            (CliError::fs("ls", &["/"], FsError::Corrupt { what: "x".into() }), Errno::EUCLEAN),
            (
                CliError::Pool { op: "open", path: "p".into(), error: MmError::invalid("x") },
                Errno::EINVAL,
            ),
            (CliError::io("read", "f", "open", io()), Errno::ENOENT),
            (CliError::invalid("write", "/f", "x"), Errno::EINVAL),
            (
                CliError::verbs(
                    "perf",
                    "h:1",
                    VerbsError::Transport {
                        what: "connect h:1".into(),
                        errno: Errno::ECONNREFUSED,
                    },
                ),
                Errno::ECONNREFUSED,
            ),
            (CliError::Damaged { path: "p".into(), errors: 1 }, Errno::EUCLEAN),
        ];
        for (e, want) in t {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}
