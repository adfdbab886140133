//! The contract every [`crate::LocalStore`] must pass: plain async functions a store
//! implementation calls from its own tests. (Being written.)
