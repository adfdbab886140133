//! Testing aids (feature `testkit`): an in-memory store, an in-memory fake remote,
//! fault injection over any remote, and the conformance suite every
//! [`crate::LocalStore`] implementation should pass.
//!
//! This is a testing aid, not a stable API.

pub mod conformance;
mod fake_filter;
mod fake_remote;
mod faults;
mod feed_cases;
mod memory;
pub mod typed;

pub use fake_remote::{Access, FakeRemote, WriteRules};
pub use faults::{Fault, FaultPlan, Faulty};
pub use memory::MemoryStore;
