//! The admin token: a file in the data directory (`admin.token` unless
//! `admin.token_file` says otherwise) holding 32 random bytes in hex, mode 0600. `pylon
//! init` and `pylon run` create it when it is missing; nothing ever overwrites it (an
//! operator who wants a new token deletes the file). Read, it is held to the rules of the
//! node key (`pylon_node::identity`): a regular file, not readable by group or others, not
//! larger than [`MAX_TOKEN_FILE_LEN`], not empty.
//!
//! Not here: the comparison with what a client presents ([`Token::matches`] is, but the
//! HTTP side is `auth.rs`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// File name of the token inside the data directory (the default of `admin.token_file`).
pub const TOKEN_FILE: &str = "admin.token";
/// Random bytes in a new token (hex-encoded in the file: 64 characters).
pub const TOKEN_BYTES: usize = 32;
/// A token file larger than this is not a token.
pub const MAX_TOKEN_FILE_LEN: u64 = 1024;
/// The shortest token accepted from a file an operator wrote themselves.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("admin token file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no admin token file at {path}: `pylon init` or `pylon run` creates it")]
    Missing { path: String },
    #[error("admin token file {path} is not a regular file")]
    NotRegular { path: String },
    #[error("admin token file {path} has mode {mode:04o}: the token must not be readable by group or others; run `chmod 600 {path}`")]
    Mode { path: String, mode: u32 },
    #[error("admin token file {path}: {reason}")]
    Bad { path: String, reason: String },
}

/// The secret a client presents as `Authorization: Bearer <token>`. Never printed:
/// `Debug` shows its length only.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} characters>)", self.0.len())
    }
}

impl Token {
    /// A token from its text, checked as a file's would be (at least [`MIN_TOKEN_LEN`]
    /// visible ASCII characters, no spaces).
    pub fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "a token has at least {MIN_TOKEN_LEN} characters (found {})",
                t.len()
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is visible ASCII characters without spaces".into());
        }
        Ok(Token(t.to_string()))
    }

    /// A new random token.
    pub fn generate() -> Token {
        use rand::RngCore;
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Token(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// What a client sends after `Bearer `.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they
    /// differ (only on the lengths, which are no secret).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Reads the token file; `Error::Missing` when there is none.
pub fn load(path: &Path) -> Result<Token, Error> {
    read(path)?.ok_or_else(|| Error::Missing {
        path: path.display().to_string(),
    })
}

/// Reads the token file, creating it with a new token when there is none. Returns the
/// token and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(Token, bool), Error> {
    if let Some(token) = read(path)? {
        return Ok((token, false));
    }
    let token = Token::generate();
    match write_new(path, &token) {
        Ok(()) => Ok((token, true)),
        // Another process made it meanwhile: theirs stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((load(path)?, false)),
        Err(source) => Err(Error::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Option<Token>, Error> {
    use pylon_node::private_file::{self, Refusal};
    let shown = path.display().to_string();
    let bytes = match private_file::read(path, MAX_TOKEN_FILE_LEN) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(Refusal::Io(source)) => {
            return Err(Error::Io {
                path: shown,
                source,
            })
        }
        Err(Refusal::NotRegular) => return Err(Error::NotRegular { path: shown }),
        Err(Refusal::Mode(mode)) => return Err(Error::Mode { path: shown, mode }),
        Err(Refusal::TooLarge) => {
            return Err(Error::Bad {
                path: shown,
                reason: format!("larger than {MAX_TOKEN_FILE_LEN} bytes; not a token"),
            })
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| Error::Bad {
        path: shown.clone(),
        reason: "not text".into(),
    })?;
    Token::new(&text).map(Some).map_err(|reason| Error::Bad {
        path: shown,
        reason,
    })
}

/// Writes a new token file (mode 0600) without ever replacing one: the token goes to a
/// temporary file, synced, then is linked into place, which fails if the name is taken.
fn write_new(path: &Path, token: &Token) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(format!("{}\n", token.secret()).as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_token_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(TOKEN_FILE);
        let (token, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(token.secret().len(), 2 * TOKEN_BYTES);
        assert!(token.secret().bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.secret(), token.secret());
        assert!(
            matches!(write_new(&path, &Token::generate()), Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(load(&path).unwrap().secret(), token.secret());
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn unsafe_or_bad_token_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert!(matches!(load(&path), Err(Error::Missing { .. })));
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, Error::Mode { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // load_or_create refuses it too, rather than replacing it.
        assert!(matches!(load_or_create(&path), Err(Error::Mode { .. })));
        for (content, why) in [
            (&b"short\n"[..], "at least"),
            (b"\n", "at least"),
            (b"0123456789abcdef 0123", "visible ASCII"),
            (&[0xffu8; 20][..], "not text"),
            (&[b'a'; 2000][..], "larger than"),
        ] {
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(TOKEN_FILE), "{e}");
        }
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, Error::NotRegular { .. }), "{e}");
    }

    #[test]
    fn tokens_compare_whole_and_never_print() {
        let t = Token::new("0123456789abcdef0123").unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        for wrong in [
            &b"0123456789abcdef0124"[..],
            b"0123456789abcdef012",
            b"0123456789abcdef01234",
            b"",
        ] {
            assert!(!t.matches(wrong));
        }
        assert!(!format!("{t:?}").contains("0123"));
        assert_ne!(Token::generate().secret(), Token::generate().secret());
    }
}
