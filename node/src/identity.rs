//! Node identity: the Ed25519 key kept in the data directory, and decoding of remote keys.
//!
//! Keys use the protobuf encoding of `specs/peer-ids/peer-ids.md` on disk and on the
//! wire; the cryptography itself comes from `libp2p-identity`. What this module adds is
//! the policy around it: where the key lives (file mode 0600; a key file that is not a
//! regular file, is readable by group or others, or is larger than [`MAX_KEY_FILE_LEN`] is
//! refused, as ssh refuses such private keys), and limits on what a remote may send (RSA
//! keys at most 8192 bits, bounded encodings).

use std::path::Path;

pub use libp2p_identity::{Keypair, PeerId, PublicKey};

/// File name of the node key inside the data directory.
pub const KEY_FILE: &str = "identity.key";

/// Upper bound on an encoded remote public key. An RSA-8192 SubjectPublicKeyInfo is
/// about 1.06 KB; anything far beyond it is refused before parsing.
pub const MAX_PUBLIC_KEY_LEN: usize = 1200;

/// Upper bound on the key file. An RSA-8192 private key in the protobuf encoding is about
/// 4.7 KB; a larger file is not a key, and is refused without reading it all.
pub const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// The largest RSA modulus we accept (the spec's bound).
pub const MAX_RSA_BITS: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a protobuf-encoded private key: {reason}")]
    BadKeyFile { path: String, reason: String },
    #[error(
        "key file {path} is empty; restore it from a backup, or remove it to create a new identity"
    )]
    EmptyKeyFile { path: String },
    #[error("key file {path} is not a regular file")]
    NotRegular { path: String },
    #[error("key file {path} is larger than {MAX_KEY_FILE_LEN} bytes; not a node key")]
    KeyFileTooLarge { path: String },
    #[error("key file {path} has mode {mode:04o}: a private key must not be readable by group or others; run `chmod 600 {path}`")]
    KeyFileMode { path: String, mode: u32 },
    #[error("public key of {0} bytes exceeds the limit")]
    KeyTooLarge(usize),
    #[error("RSA key of {0} bits exceeds {MAX_RSA_BITS}")]
    RsaTooLarge(usize),
    #[error("undecodable public key: {0}")]
    BadPublicKey(String),
}

/// Loads the node key from `dir/identity.key`, creating a fresh Ed25519 key on first use.
///
/// The new key is written to a temporary file with mode 0600, synced, then renamed into
/// place, so a crash never leaves a half-written key behind.
pub fn load_or_generate(dir: &Path) -> Result<Keypair, Error> {
    let path = dir.join(KEY_FILE);
    let shown = path.display().to_string();
    let io = |source| Error::Io {
        path: shown.clone(),
        source,
    };
    if let Some(key) = read_key_file(&path)? {
        return Ok(key);
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let key = Keypair::generate_ed25519();
    let encoded = key.to_protobuf_encoding().map_err(|e| Error::BadKeyFile {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    write_private(&path, &encoded).map_err(io)?;
    Ok(key)
}

/// Loads the node key from `dir/identity.key` if there is one; never creates it.
pub fn load(dir: &Path) -> Result<Option<Keypair>, Error> {
    read_key_file(&dir.join(KEY_FILE))
}

/// Reads and decodes a key file; `None` when it does not exist. Refused before decoding: a
/// file that is not a regular file (a symlink to `/dev/zero` would be read forever), one
/// readable by group or others, one larger than [`MAX_KEY_FILE_LEN`], an empty one.
fn read_key_file(path: &Path) -> Result<Option<Keypair>, Error> {
    use crate::private_file::{self, Refusal};
    let shown = path.display().to_string();
    let bytes = match private_file::read(path, MAX_KEY_FILE_LEN) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(Refusal::Io(source)) => {
            return Err(Error::Io {
                path: shown,
                source,
            })
        }
        Err(Refusal::NotRegular) => return Err(Error::NotRegular { path: shown }),
        Err(Refusal::Mode(mode)) => return Err(Error::KeyFileMode { path: shown, mode }),
        Err(Refusal::TooLarge) => return Err(Error::KeyFileTooLarge { path: shown }),
    };
    if bytes.is_empty() {
        return Err(Error::EmptyKeyFile { path: shown });
    }
    Keypair::from_protobuf_encoding(&bytes)
        .map(Some)
        .map_err(|e| Error::BadKeyFile {
            path: shown,
            reason: e.to_string(),
        })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Decodes a remote's protobuf `PublicKey`, enforcing our size limits.
pub fn decode_public_key(bytes: &[u8]) -> Result<PublicKey, Error> {
    if bytes.len() > MAX_PUBLIC_KEY_LEN {
        return Err(Error::KeyTooLarge(bytes.len()));
    }
    let key =
        PublicKey::try_decode_protobuf(bytes).map_err(|e| Error::BadPublicKey(e.to_string()))?;
    if let Ok(rsa) = key.clone().try_into_rsa() {
        let bits = rsa_modulus_bits(&rsa.encode_x509());
        if bits > MAX_RSA_BITS {
            return Err(Error::RsaTooLarge(bits));
        }
    }
    Ok(key)
}

/// Modulus size of an RSA SubjectPublicKeyInfo, read from its DER without a full parser:
/// the modulus is the first INTEGER inside the inner SEQUENCE. Returns 0 when unreadable
/// (verification by `ring` then refuses the key anyway).
fn rsa_modulus_bits(spki: &[u8]) -> usize {
    // Walk: SEQUENCE { SEQUENCE {alg}, BIT STRING { 0x00, SEQUENCE { INTEGER n, INTEGER e } } }
    fn header(buf: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *buf.first()?;
        let first = *buf.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, first, 2));
        }
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *buf.get(2 + i)? as usize;
        }
        Some((tag, len, 2 + n))
    }
    fn bits(spki: &[u8]) -> Option<usize> {
        let (_, _, h) = header(spki)?; // outer SEQUENCE
        let rest = spki.get(h..)?;
        let (_, alg_len, ah) = header(rest)?; // algorithm SEQUENCE
        let rest = rest.get(ah + alg_len..)?;
        let (tag, _, bh) = header(rest)?; // BIT STRING
        if tag != 0x03 {
            return None;
        }
        let rest = rest.get(bh + 1..)?; // skip unused-bits byte
        let (_, _, sh) = header(rest)?; // RSAPublicKey SEQUENCE
        let rest = rest.get(sh..)?;
        let (tag, n_len, nh) = header(rest)?;
        if tag != 0x02 {
            return None;
        }
        let n = rest.get(nh..nh + n_len)?;
        let n = match n.iter().position(|&b| b != 0) {
            Some(i) => &n[i..],
            None => return Some(0),
        };
        Some(n.len() * 8 - n[0].leading_zeros() as usize)
    }
    bits(spki).unwrap_or(0)
}

/// A short label for a key type, for metrics (`libp2p_swarm_key_types_total{key_type}`).
pub fn key_type_label(key: &PublicKey) -> &'static str {
    match key.key_type() {
        libp2p_identity::KeyType::Ed25519 => "ed25519",
        libp2p_identity::KeyType::Secp256k1 => "secp256k1",
        libp2p_identity::KeyType::Ecdsa => "ecdsa",
        libp2p_identity::KeyType::RSA => "rsa",
    }
}

/// Signature checks that passed, remembered so a peer that reconnects (or resends the
/// same signed record) is not verified again. Keyed by the SHA-256 of the encoded key, the
/// message and the signature together, so only the exact same check can hit; bounded,
/// oldest forgotten first.
struct VerifiedSignatures {
    set: std::collections::HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

/// Most checks [`verify_cached`] remembers.
const VERIFIED_SIGNATURES: usize = 4096;

fn verified_signatures() -> std::sync::MutexGuard<'static, VerifiedSignatures> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<VerifiedSignatures>> =
        std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            std::sync::Mutex::new(VerifiedSignatures {
                set: std::collections::HashSet::new(),
                order: std::collections::VecDeque::new(),
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `key.verify(msg, sig)`, answered from memory when this exact check passed before.
/// `key_bytes` is the key's protobuf encoding as received.
pub fn verify_cached(key: &PublicKey, key_bytes: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [key_bytes, msg, sig] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(h.finish().as_ref());
    if verified_signatures().set.contains(&digest) {
        return true;
    }
    if !key.verify(msg, sig) {
        return false;
    }
    let mut cache = verified_signatures();
    if cache.set.insert(digest) {
        cache.order.push_back(digest);
        if cache.order.len() > VERIFIED_SIGNATURES {
            if let Some(old) = cache.order.pop_front() {
                cache.set.remove(&old);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // specs/peer-ids/peer-ids.md, "Test vectors".
    const VECTORS: &[(&str, &str)] = &[
        (
            "08031279307702010104203E5B1FE9712E6C314942A750BD67485DE3C1EFE85B1BFB520AE8F9AE3DFA4A4CA00A06082A8648CE3D030107A14403420004DE3D300FA36AE0E8F5D530899D83ABAB44ABF3161F162A4BC901D8E6ECDA020E8B6D5F8DA30525E71D6851510C098E5C47C646A597FB4DCEC034E9F77C409E62",
            "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4dcec034e9f77c409e62",
        ),
        (
            "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e",
            "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e",
        ),
        (
            "0802122053DADF1D5A164D6B4ACDB15E24AA4C5B1D3461BDBD42ABEDB0A4404D56CED8FB",
            "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99",
        ),
    ];

    #[test]
    fn spec_vectors_private_to_public_and_sign_verify() {
        for (private, public) in VECTORS {
            let key = Keypair::from_protobuf_encoding(&hex(private)).unwrap();
            assert_eq!(key.public().encode_protobuf(), hex(public));
            let remote = decode_public_key(&hex(public)).unwrap();
            let sig = key.sign(b"pylon").unwrap();
            assert!(remote.verify(b"pylon", &sig));
            assert!(!remote.verify(b"pylon!", &sig));
        }
    }

    #[test]
    fn spec_vector_rsa_4096() {
        let text = include_str!("../tests/data/rsa-private-vector.hex");
        let private = hex(text.trim());
        let key = Keypair::from_protobuf_encoding(&private).unwrap();
        let encoded = key.public().encode_protobuf();
        let public = include_str!("../tests/data/rsa-public-vector.hex");
        assert_eq!(encoded, hex(public.trim()));
        let remote = decode_public_key(&encoded).unwrap();
        let rsa = remote.clone().try_into_rsa().unwrap();
        assert_eq!(rsa_modulus_bits(&rsa.encode_x509()), 4096);
        let sig = key.sign(b"pylon").unwrap();
        assert!(remote.verify(b"pylon", &sig));
    }

    #[test]
    fn garbage_keys_are_errors() {
        assert!(decode_public_key(&[]).is_err());
        assert!(decode_public_key(&[0x08, 0x01, 0x12, 0x05, 1, 2, 3, 4, 5]).is_err());
        assert!(decode_public_key(&[0x08, 0x09, 0x12, 0x01, 0]).is_err());
        assert!(matches!(
            decode_public_key(&[0u8; 5000]),
            Err(Error::KeyTooLarge(5000))
        ));
    }

    #[test]
    fn key_survives_reload_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path()).unwrap();
        let second = load_or_generate(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write_with_mode(&dir.path().join(KEY_FILE), b"garbage", 0o600);
        assert!(matches!(
            load_or_generate(dir.path()),
            Err(Error::BadKeyFile { .. })
        ));
    }

    fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn unsafe_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let shown = path.display().to_string();
        let good = Keypair::generate_ed25519().to_protobuf_encoding().unwrap();

        // Readable by group or others: refused, like ssh, naming the file and the fix.
        for mode in [0o644, 0o640, 0o604, 0o660] {
            write_with_mode(&path, &good, mode);
            let e = load_or_generate(dir.path()).unwrap_err();
            assert!(matches!(e, Error::KeyFileMode { .. }), "{mode:o}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&shown) && msg.contains("chmod 600"), "{msg}");
        }
        write_with_mode(&path, &good, 0o400);
        assert!(load(dir.path()).unwrap().is_some(), "0400 is fine");

        // Empty: says so, rather than "failed to parse RSA DER".
        write_with_mode(&path, b"", 0o600);
        let msg = load_or_generate(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(&shown) && msg.contains("is empty"), "{msg}");

        // Larger than any key: refused after reading at most the bound.
        write_with_mode(&path, &vec![0x08; 20_000], 0o600);
        let e = load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(e, Error::KeyFileTooLarge { .. }), "{e}");

        // A symlink to a device that never ends, and a directory: not regular files.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let e = load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(e, Error::NotRegular { .. }), "{e}");
        assert!(e.to_string().contains(&shown), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(e, Error::NotRegular { .. }), "{e}");

        // `load` never creates a key.
        let empty = tempfile::tempdir().unwrap();
        assert!(load(empty.path()).unwrap().is_none());
        assert!(!empty.path().join(KEY_FILE).exists());
    }

    #[test]
    fn cached_verification_matches_the_real_one_and_is_bounded() {
        let k = Keypair::generate_ed25519();
        let public = k.public();
        let bytes = public.encode_protobuf();
        let sig = k.sign(b"message").unwrap();
        assert!(verify_cached(&public, &bytes, b"message", &sig));
        assert!(verify_cached(&public, &bytes, b"message", &sig), "cached");
        // Any other input misses the cache and fails.
        assert!(!verify_cached(&public, &bytes, b"messagE", &sig));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(!verify_cached(&public, &bytes, b"message", &bad));
        let other = Keypair::generate_ed25519().public();
        assert!(!verify_cached(
            &other,
            &other.encode_protobuf(),
            b"message",
            &sig
        ));
        for i in 0..VERIFIED_SIGNATURES + 10 {
            let m = i.to_be_bytes();
            let s = k.sign(&m).unwrap();
            assert!(verify_cached(&public, &bytes, &m, &s));
        }
        let cache = verified_signatures();
        assert!(cache.set.len() <= VERIFIED_SIGNATURES && cache.order.len() == cache.set.len());
    }
}
