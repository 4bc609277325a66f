//! The storage node: the embedded LSM engine ([`lsm`]), the layout of cluster keys inside it
//! ([`storage_key`]), and the pure decisions of coordination and membership ([`cluster`]);
//! the networked node that drives them joins in a later issue.

pub mod cluster;
pub mod lsm;
pub mod storage_key;
