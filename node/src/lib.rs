//! The storage node: the embedded LSM engine ([`lsm`]), the layout of cluster keys inside it
//! ([`storage_key`]), the pure decisions of coordination and membership ([`cluster`]), and
//! kv-node's layered configuration ([`config`]), the networked node that drives them
//! ([`server`]), and what its requests pay for heap memory ([`memory`]).

pub mod cluster;
pub mod config;
pub mod lsm;
pub mod memory;
pub mod server;
pub mod storage_key;
