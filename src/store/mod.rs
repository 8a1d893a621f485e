//! What airlock keeps on disk, in one sled database: requests and their
//! confirmation state, and the audit log.

pub mod audit;
pub mod requests;
