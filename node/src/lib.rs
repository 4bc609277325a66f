//! The storage node. For now this crate holds the embedded LSM engine ([`lsm`]); the coordinator,
//! replication and membership join it in later issues.

pub mod lsm;
