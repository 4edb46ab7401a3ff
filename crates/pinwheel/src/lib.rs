//! pinwheel: the application API — verbs on a pinwheel node — and the library helper that
//! hides MR de-coherence from applications that opt in.
//!
//! **Owns**: [`AutoRestore`]; re-exports the API of the parts (`mm`, `fs`, `verbs`, `node`).
//! **Does not own**: the parts. The connected placement (a client of `pinwheel serve`) comes
//! with the node daemon; today the API is used embedded: the node runs in the application.
//!
//! Thread safety: everything is `Send + Sync`.

mod auto_restore;
pub mod client;

pub use auto_restore::{AutoRestore, AutoRestoreStats};
pub use pinwheel_fs as fs;
pub use pinwheel_mm as mm;
pub use pinwheel_node as node;
pub use pinwheel_node::{Node, NodeConfig, PoolSpec};
pub use pinwheel_verbs as verbs;
pub use pinwheel_verbs::*;
