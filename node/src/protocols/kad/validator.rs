//! Record validation (`specs/kad-dht/README.md#entry-validation`): every value record is
//! checked by the validator of its key's namespace (`/<namespace>/...`) before it is stored
//! and when a lookup receives it; a key in a namespace without a validator is refused.
//!
//! Built in: `/pk/` (a public key stored under the multihash of its PeerId), `/ipns/`
//! (IPNS records, `specs`-external: the IPNS Record specification, V2 signatures over the
//! DAG-CBOR `data` field, EOL validity) and `/peer-record/` (a peer's signed peer record,
//! see [`PEER_RECORD_NAMESPACE`]). Others are plugged in with [`Validators::with`].

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::identity::{decode_public_key, PeerId, PublicKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no validator for this key's namespace")]
    UnknownNamespace,
    #[error("malformed key")]
    BadKey,
    #[error("malformed value")]
    BadValue,
    #[error("key and value do not belong together")]
    Mismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("record has expired")]
    Expired,
    #[error("record is too large")]
    TooLarge,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::UnknownNamespace => "unknown_namespace",
            Error::BadKey => "bad_key",
            Error::BadValue => "bad_value",
            Error::Mismatch => "mismatch",
            Error::BadSignature => "bad_signature",
            Error::Expired => "expired",
            Error::TooLarge => "too_large",
        }
    }
}

/// A namespace's rules.
pub trait Validator: Send + Sync + 'static {
    /// Is `value` a valid record for `key` at `now_ms` (Unix milliseconds)?
    fn validate(&self, key: &[u8], value: &[u8], now_ms: u64) -> Result<(), Error>;
    /// The best of several valid values (index into `values`). Must be stable.
    fn select(&self, key: &[u8], values: &[&[u8]]) -> usize {
        let _ = (key, values);
        0
    }
}

/// Validators by namespace.
#[derive(Clone, Default)]
pub struct Validators {
    by_namespace: HashMap<Vec<u8>, Arc<dyn Validator>>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self
            .by_namespace
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        names.sort();
        f.debug_struct("Validators")
            .field("namespaces", &names)
            .finish()
    }
}

/// The namespace of a key `/<ns>/<rest>`, and the rest.
pub fn split_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = key.strip_prefix(b"/")?;
    let end = rest.iter().position(|&b| b == b'/')?;
    (end > 0).then(|| (&rest[..end], &rest[end + 1..]))
}

impl Validators {
    /// `/pk/`, `/ipns/` and `/peer-record/`.
    pub fn standard() -> Self {
        Validators::default()
            .with("pk", Arc::new(PkValidator))
            .with("ipns", Arc::new(IpnsValidator))
            .with(PEER_RECORD_NAMESPACE, Arc::new(PeerRecordValidator))
    }

    /// Adds (or replaces) the validator of a namespace.
    pub fn with(mut self, namespace: &str, validator: Arc<dyn Validator>) -> Self {
        self.by_namespace
            .insert(namespace.as_bytes().to_vec(), validator);
        self
    }

    fn of(&self, key: &[u8]) -> Result<&Arc<dyn Validator>, Error> {
        let (ns, _) = split_key(key).ok_or(Error::UnknownNamespace)?;
        self.by_namespace.get(ns).ok_or(Error::UnknownNamespace)
    }

    pub fn validate(&self, key: &[u8], value: &[u8], now_ms: u64) -> Result<(), Error> {
        self.of(key)?.validate(key, value, now_ms)
    }

    pub fn select(&self, key: &[u8], values: &[&[u8]]) -> usize {
        match self.of(key) {
            Ok(v) if values.len() > 1 => v.select(key, values).min(values.len() - 1),
            _ => 0,
        }
    }
}

/// `/pk/<PeerId multihash>` → the protobuf-encoded public key of that PeerId.
pub struct PkValidator;

impl Validator for PkValidator {
    fn validate(&self, key: &[u8], value: &[u8], _now_ms: u64) -> Result<(), Error> {
        let (_, id) = split_key(key).ok_or(Error::BadKey)?;
        let peer = PeerId::from_bytes(id).map_err(|_| Error::BadKey)?;
        let public = decode_public_key(value).map_err(|_| Error::BadValue)?;
        if public.to_peer_id() != peer {
            return Err(Error::Mismatch);
        }
        Ok(())
    }
}

// ---- signed peer records ------------------------------------------------------------------

/// The namespace under which signed peer records are served: key
/// `/peer-record/<binary PeerId>`, value the peer's signed envelope (RFC 0002) holding its
/// peer record (RFC 0003, or rust-libp2p's legacy routing-state format) exactly as the
/// peer signed it. Any client can GET_VALUE it and verify the signature itself; a peer may
/// PUT_VALUE its own. The newest `seq` wins.
pub const PEER_RECORD_NAMESPACE: &str = "peer-record";

/// The `/peer-record/` key of a peer.
pub fn peer_record_key(peer: &PeerId) -> Vec<u8> {
    let mut k = format!("/{PEER_RECORD_NAMESPACE}/").into_bytes();
    k.extend_from_slice(&peer.to_bytes());
    k
}

pub struct PeerRecordValidator;

impl PeerRecordValidator {
    fn open(key: &[u8], value: &[u8]) -> Result<crate::record::VerifiedPeerRecord, Error> {
        let (_, id) = split_key(key).ok_or(Error::BadKey)?;
        let peer = PeerId::from_bytes(id).map_err(|_| Error::BadKey)?;
        let record = crate::record::open_peer_record(value).map_err(|e| match e {
            crate::record::Error::BadSignature => Error::BadSignature,
            _ => Error::BadValue,
        })?;
        if record.peer_id() != peer {
            return Err(Error::Mismatch);
        }
        Ok(record)
    }
}

impl Validator for PeerRecordValidator {
    fn validate(&self, key: &[u8], value: &[u8], _now_ms: u64) -> Result<(), Error> {
        Self::open(key, value).map(|_| ())
    }

    fn select(&self, key: &[u8], values: &[&[u8]]) -> usize {
        let seq = |v: &[u8]| Self::open(key, v).ok().map(|r| r.seq());
        let mut best = 0;
        for (i, v) in values.iter().enumerate().skip(1) {
            if seq(v) > seq(values[best]) {
                best = i;
            }
        }
        best
    }
}

// ---- IPNS --------------------------------------------------------------------------------

/// Largest IPNS record (the IPNS spec: implementations MUST reject records over 10 KiB).
pub const IPNS_MAX_RECORD: usize = 10 * 1024;
const IPNS_SIGNATURE_PREFIX: &[u8] = b"ipns-signature:";

/// `IpnsEntry` (IPNS record protobuf).
#[derive(Clone, PartialEq, Message)]
pub struct IpnsEntry {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub value: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub signature_v1: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "3")]
    pub validity_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub validity: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "5")]
    pub sequence: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub ttl: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub pub_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub signature_v2: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub data: Option<Vec<u8>>,
}

/// The signed fields of an IPNS record (its DAG-CBOR `data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpnsData {
    pub value: Vec<u8>,
    pub validity: Vec<u8>,
    pub validity_type: u64,
    pub sequence: u64,
    pub ttl: u64,
}

impl IpnsData {
    /// DAG-CBOR encoding (map keys in length-then-bytes order).
    pub fn to_cbor(&self) -> Vec<u8> {
        use ciborium::value::Value;
        let map = Value::Map(vec![
            (Value::Text("TTL".into()), Value::Integer(self.ttl.into())),
            (
                Value::Text("Value".into()),
                Value::Bytes(self.value.clone()),
            ),
            (
                Value::Text("Sequence".into()),
                Value::Integer(self.sequence.into()),
            ),
            (
                Value::Text("Validity".into()),
                Value::Bytes(self.validity.clone()),
            ),
            (
                Value::Text("ValidityType".into()),
                Value::Integer(self.validity_type.into()),
            ),
        ]);
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = ciborium::ser::into_writer(&map, &mut out);
        out
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, Error> {
        use ciborium::value::Value;
        let value: Value = ciborium::de::from_reader(bytes).map_err(|_| Error::BadValue)?;
        let Value::Map(entries) = value else {
            return Err(Error::BadValue);
        };
        let field = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v)
        };
        let bytes = |name: &str| match field(name) {
            Some(Value::Bytes(b)) => Ok(b.clone()),
            _ => Err(Error::BadValue),
        };
        let int = |name: &str| match field(name) {
            Some(Value::Integer(i)) => u64::try_from(*i).map_err(|_| Error::BadValue),
            _ => Err(Error::BadValue),
        };
        Ok(IpnsData {
            value: bytes("Value")?,
            validity: bytes("Validity")?,
            validity_type: int("ValidityType")?,
            sequence: int("Sequence")?,
            ttl: int("TTL")?,
        })
    }

    /// The EOL as Unix milliseconds.
    pub fn eol_ms(&self) -> Result<u64, Error> {
        if self.validity_type != 0 {
            return Err(Error::BadValue);
        }
        let s = std::str::from_utf8(&self.validity).map_err(|_| Error::BadValue)?;
        parse_rfc3339_ms(s).ok_or(Error::BadValue)
    }
}

/// Builds a signed IPNS record (V1+V2 fields, as go-libp2p and js-libp2p publish).
pub fn seal_ipns(
    key: &crate::identity::Keypair,
    data: &IpnsData,
) -> Result<Vec<u8>, libp2p_identity::SigningError> {
    let cbor = data.to_cbor();
    let mut signed = IPNS_SIGNATURE_PREFIX.to_vec();
    signed.extend_from_slice(&cbor);
    let signature_v2 = key.sign(&signed)?;
    let entry = IpnsEntry {
        value: Some(data.value.clone()),
        signature_v1: None,
        validity_type: Some(data.validity_type as i32),
        validity: Some(data.validity.clone()),
        sequence: Some(data.sequence),
        ttl: Some(data.ttl),
        pub_key: Some(key.public().encode_protobuf()),
        signature_v2: Some(signature_v2),
        data: Some(cbor),
    };
    Ok(entry.encode_to_vec())
}

/// A checked IPNS record.
#[derive(Debug, Clone)]
pub struct IpnsRecord {
    pub data: IpnsData,
    pub eol_ms: u64,
}

/// Checks an IPNS record found under `/ipns/<name>` (signature, key binding, V1/V2
/// agreement, EOL).
pub fn open_ipns(key: &[u8], value: &[u8], now_ms: u64) -> Result<IpnsRecord, Error> {
    if value.len() > IPNS_MAX_RECORD {
        return Err(Error::TooLarge);
    }
    let (_, name) = split_key(key).ok_or(Error::BadKey)?;
    let peer = PeerId::from_bytes(name).map_err(|_| Error::BadKey)?;
    let entry = IpnsEntry::decode(value).map_err(|_| Error::BadValue)?;
    let (Some(sig), Some(cbor)) = (&entry.signature_v2, &entry.data) else {
        return Err(Error::BadSignature); // V1-only records are no longer valid
    };
    let public: PublicKey = match &entry.pub_key {
        Some(k) => decode_public_key(k).map_err(|_| Error::BadValue)?,
        None => public_key_in(&peer).ok_or(Error::BadValue)?,
    };
    if public.to_peer_id() != peer {
        return Err(Error::Mismatch);
    }
    let mut signed = IPNS_SIGNATURE_PREFIX.to_vec();
    signed.extend_from_slice(cbor);
    if !public.verify(&signed, sig) {
        return Err(Error::BadSignature);
    }
    let data = IpnsData::from_cbor(cbor)?;
    // Protobuf copies of the signed fields, when present, must say the same.
    let disagrees = entry.value.as_ref().is_some_and(|v| *v != data.value)
        || entry.validity.as_ref().is_some_and(|v| *v != data.validity)
        || entry.sequence.is_some_and(|s| s != data.sequence)
        || entry.ttl.is_some_and(|t| t != data.ttl)
        || entry
            .validity_type
            .is_some_and(|t| i64::from(t) != data.validity_type as i64);
    if disagrees {
        return Err(Error::Mismatch);
    }
    let eol_ms = data.eol_ms()?;
    if eol_ms <= now_ms {
        return Err(Error::Expired);
    }
    Ok(IpnsRecord { data, eol_ms })
}

/// The public key inlined in an identity-multihash PeerId (Ed25519, secp256k1).
fn public_key_in(peer: &PeerId) -> Option<PublicKey> {
    let bytes = peer.to_bytes();
    // identity multihash: 0x00, varint length, key protobuf
    if bytes.first() != Some(&0) {
        return None;
    }
    let (len, n) = crate::varint::decode(&bytes[1..]).ok()?;
    let key = bytes.get(1 + n..)?;
    (key.len() as u64 == len).then(|| decode_public_key(key).ok())?
}

pub struct IpnsValidator;

impl Validator for IpnsValidator {
    fn validate(&self, key: &[u8], value: &[u8], now_ms: u64) -> Result<(), Error> {
        open_ipns(key, value, now_ms).map(|_| ())
    }

    /// Highest sequence number wins, then the later EOL; invalid values lose.
    fn select(&self, key: &[u8], values: &[&[u8]]) -> usize {
        let rank = |v: &[u8]| {
            open_ipns(key, v, 0)
                .ok()
                .map(|r| (r.data.sequence, r.eol_ms))
        };
        let mut best = 0;
        let mut best_rank = values.first().and_then(|v| rank(v));
        for (i, v) in values.iter().enumerate().skip(1) {
            let r = rank(v);
            if r > best_rank {
                best = i;
                best_rank = r;
            }
        }
        best
    }
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-27T10:00:00.123456789Z`, or with a numeric
/// offset) to Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *c == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Formats Unix milliseconds as RFC 3339 UTC with nanoseconds (go's `RFC3339Nano` shape).
pub fn format_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        (ms % 1000) * 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn pk_key(peer: &PeerId) -> Vec<u8> {
        let mut k = b"/pk/".to_vec();
        k.extend_from_slice(&peer.to_bytes());
        k
    }

    fn ipns_key(peer: &PeerId) -> Vec<u8> {
        let mut k = b"/ipns/".to_vec();
        k.extend_from_slice(&peer.to_bytes());
        k
    }

    #[test]
    fn pk_records_bind_key_to_peer() {
        let v = Validators::standard();
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let key = pk_key(&a.public().to_peer_id());
        assert_eq!(v.validate(&key, &a.public().encode_protobuf(), 0), Ok(()));
        assert_eq!(
            v.validate(&key, &b.public().encode_protobuf(), 0),
            Err(Error::Mismatch)
        );
        assert_eq!(v.validate(&key, b"garbage", 0), Err(Error::BadValue));
        assert_eq!(v.validate(b"/pk/xyz", b"", 0), Err(Error::BadKey));
        assert_eq!(
            v.validate(b"/other/x", b"", 0),
            Err(Error::UnknownNamespace)
        );
        assert_eq!(
            v.validate(b"no-namespace", b"", 0),
            Err(Error::UnknownNamespace)
        );
        assert_eq!(v.validate(b"//x", b"", 0), Err(Error::UnknownNamespace));
    }

    #[test]
    fn ipns_records_are_signed_and_expire() {
        let v = Validators::standard();
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let now = 1_800_000_000_000u64;
        let data = |seq: u64, eol: u64| IpnsData {
            value: b"/ipfs/bafkqaaa".to_vec(),
            validity: format_rfc3339(eol).into_bytes(),
            validity_type: 0,
            sequence: seq,
            ttl: 60_000_000_000,
        };
        let good = seal_ipns(&key, &data(1, now + 3_600_000)).unwrap();
        assert_eq!(v.validate(&ipns_key(&peer), &good, now), Ok(()));
        assert_eq!(
            v.validate(&ipns_key(&peer), &good, now + 3_600_000),
            Err(Error::Expired)
        );
        // Another peer's name.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(
            v.validate(&ipns_key(&other), &good, now),
            Err(Error::Mismatch)
        );
        // Tampered protobuf copy of a signed field.
        let mut entry = IpnsEntry::decode(good.as_slice()).unwrap();
        entry.sequence = Some(9);
        assert_eq!(
            v.validate(&ipns_key(&peer), &entry.encode_to_vec(), now),
            Err(Error::Mismatch)
        );
        // Tampered signed data.
        let mut entry = IpnsEntry::decode(good.as_slice()).unwrap();
        entry.data = Some(data(9, now + 3_600_000).to_cbor());
        entry.sequence = Some(9);
        assert_eq!(
            v.validate(&ipns_key(&peer), &entry.encode_to_vec(), now),
            Err(Error::BadSignature)
        );
        // The key may be left out: Ed25519 PeerIds carry it.
        let mut entry = IpnsEntry::decode(good.as_slice()).unwrap();
        entry.pub_key = None;
        assert_eq!(
            v.validate(&ipns_key(&peer), &entry.encode_to_vec(), now),
            Ok(())
        );
        // V1-only (no V2 signature) is refused; oversize too.
        let mut entry = IpnsEntry::decode(good.as_slice()).unwrap();
        entry.signature_v2 = None;
        assert_eq!(
            v.validate(&ipns_key(&peer), &entry.encode_to_vec(), now),
            Err(Error::BadSignature)
        );
        assert_eq!(
            v.validate(&ipns_key(&peer), &vec![0u8; IPNS_MAX_RECORD + 1], now),
            Err(Error::TooLarge)
        );
        // Select: higher sequence, then later EOL.
        let newer = seal_ipns(&key, &data(2, now + 60_000)).unwrap();
        let longer = seal_ipns(&key, &data(2, now + 120_000)).unwrap();
        let k = ipns_key(&peer);
        assert_eq!(v.select(&k, &[&good, &newer]), 1);
        assert_eq!(v.select(&k, &[&newer, &good]), 0);
        assert_eq!(v.select(&k, &[&newer, &longer, &good]), 1);
        assert_eq!(v.select(&k, &[b"junk", &good]), 1);
    }

    #[test]
    fn peer_records_verify_and_newest_wins() {
        let v = Validators::standard();
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let addr: multiaddr::Multiaddr = "/ip4/1.2.3.4/tcp/4001".parse().unwrap();
        let old = crate::record::seal_peer_record(&key, 1, std::slice::from_ref(&addr)).unwrap();
        let new = crate::record::seal_peer_record(&key, 2, &[addr]).unwrap();
        let k = peer_record_key(&peer);
        assert_eq!(v.validate(&k, &old, 0), Ok(()));
        assert_eq!(v.select(&k, &[&old, &new]), 1);
        assert_eq!(v.select(&k, &[&new, &old]), 0);
        let other = peer_record_key(&Keypair::generate_ed25519().public().to_peer_id());
        assert_eq!(v.validate(&other, &old, 0), Err(Error::Mismatch));
        let mut tampered = old.clone();
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        assert!(v.validate(&k, &tampered, 0).is_err());
        assert_eq!(v.validate(&k, b"junk", 0), Err(Error::BadValue));
    }

    #[test]
    fn rfc3339_round_trips() {
        for ms in [0u64, 951_782_400_000, 1_700_000_000_123, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T01:00:00+01:00"),
            Some(951_868_800_000)
        );
        for bad in [
            "",
            "2020-13-01T00:00:00Z",
            "2020-01-01T00:00:00",
            "2020-01-01T00:00:00.Z",
            "x020-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
