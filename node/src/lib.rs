//! The storage node. For now this crate holds the embedded LSM engine ([`lsm`]) and the layout
//! of cluster keys inside it ([`storage_key`]); the coordinator, replication and membership join
//! them in later issues.

pub mod cluster;
pub mod lsm;
pub mod storage_key;
