//! Testing aids (feature `testkit`): an in-memory store, an in-memory fake remote,
//! fault injection over any remote, and the conformance suite every
//! [`crate::LocalStore`] implementation should pass, and the remote contract
//! ([`remote_contract`]) every [`crate::RemoteStore`] should pass.
//!
//! This is a testing aid, not a stable API.

pub mod conformance;
mod fake_filter;
mod fake_remote;
mod faults;
mod feed_cases;
mod memory;
pub mod remote_contract;
pub mod typed;

pub use fake_remote::{Access, FakeRemote, WriteRules};
pub use faults::{Fault, FaultPlan, Faulty};
pub use memory::MemoryStore;
