//! Testing aids (feature `testkit`): an in-memory store, an in-memory fake remote,
//! fault injection over any remote, and the conformance suite every
//! [`crate::LocalStore`] implementation should pass.
//!
//! This is a testing aid, not a stable API.

mod memory;

pub use memory::{changed_fields, MemoryStore};
pub mod conformance;
