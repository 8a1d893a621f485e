//! What airlock keeps on disk, in one sled database: requests and their
//! confirmation state, and the audit log.

pub mod audit;
pub mod merkle;
pub mod requests;
pub mod segment;

use std::path::Path;

/// Write a secret file readable only by us, atomically (a temporary file,
/// synced, renamed over `path`).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
