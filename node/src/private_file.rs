//! Reading a file that holds a secret (the node key, the admin token): refused before its
//! bytes are trusted when it is not a regular file (a FIFO would block the open, a symlink
//! to `/dev/zero` would be read forever), when group or others may read it, or when it is
//! larger than the caller allows. Callers turn a [`Refusal`] into their own error, which
//! names the file and what to do.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why a secret file was not read.
#[derive(Debug)]
pub enum Refusal {
    Io(std::io::Error),
    NotRegular,
    /// Readable by group or others: the permission bits found.
    Mode(u32),
    /// Larger than the caller's limit.
    TooLarge,
}

/// The bytes of the secret file at `path` (at most `max` of them); `None` when there is
/// no such file.
pub fn read(path: &Path, max: u64) -> Result<Option<Vec<u8>>, Refusal> {
    // Checked before opening too: opening a FIFO would block until a writer shows up.
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(Refusal::NotRegular),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refusal::Io(e)),
    }
    let file = std::fs::File::open(path).map_err(Refusal::Io)?;
    // The opened file is what counts (the path may have changed since the check above).
    let meta = file.metadata().map_err(Refusal::Io)?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Refusal::Mode(mode));
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(Refusal::Io)?;
    if bytes.len() as u64 > max {
        return Err(Refusal::TooLarge);
    }
    Ok(Some(bytes))
}
