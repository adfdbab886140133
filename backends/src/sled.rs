//! sled
/// stub
pub struct SledStore;
