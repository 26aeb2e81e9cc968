//! Signed envelopes (RFC 0002) and peer records (RFC 0003).
//!
//! We seal our own records the way go-libp2p and js-libp2p do (domain `libp2p-peer-record`,
//! payload type multicodec `0x0301`), called "RFC 0003" in this code base. On receipt we also accept the
//! legacy format rust-libp2p 0.57 still signs (domain `libp2p-routing-state`, payload type
//! `/libp2p/routing-state-record`), and remember which one a record came in.
//!
//! A [`VerifiedPeerRecord`] can only be built by [`open_peer_record`] after the signature,
//! the key/PeerId binding and the payload were checked: holding one is the proof.

use multiaddr::Multiaddr;
use prost::Message;

use crate::identity::{decode_public_key, Keypair, PeerId, PublicKey};
use crate::proto;
use crate::varint;

// Deliberate deviation: the RFC 0003 text (specs/RFC/0003-routing-records.md, "Signed
// Envelope Domain") names `libp2p-routing-state` and a string payload type, which is what
// rust-libp2p still signs. go-libp2p and js-libp2p — most of the network — settled on the
// domain below with the multicodec payload type, and js-libp2p rejects the RFC text's form.
// We sign what go/js accept and verify both.
pub const PEER_RECORD_DOMAIN: &str = "libp2p-peer-record";
/// Multicodec `libp2p-peer-record` (0x0301), as the two bytes go-libp2p and js-libp2p send.
pub const PEER_RECORD_PAYLOAD_TYPE: &[u8] = &[0x03, 0x01];
/// rust-libp2p's pre-RFC domain.
pub const LEGACY_DOMAIN: &str = "libp2p-routing-state";
/// rust-libp2p's pre-RFC payload type.
pub const LEGACY_PAYLOAD_TYPE: &[u8] = b"/libp2p/routing-state-record";

/// Largest signed envelope we look at (an RSA key plus a few hundred addresses).
pub const MAX_ENVELOPE_LEN: usize = 16 * 1024;
/// Most addresses we keep from one record; the rest are dropped, not an error.
pub const MAX_RECORD_ADDRS: usize = 64;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("envelope too large or malformed")]
    MalformedEnvelope,
    #[error("envelope public key invalid")]
    BadKey,
    #[error("envelope domain or payload type is not a peer record")]
    WrongType,
    #[error("envelope signature invalid")]
    BadSignature,
    #[error("peer record payload malformed")]
    MalformedRecord,
    #[error("record's PeerId does not match the signing key")]
    PeerIdMismatch,
    #[error("record is for another peer than the one that sent it")]
    WrongPeer,
    #[error("record seq {got} is not newer than {held}")]
    Stale { got: u64, held: u64 },
    #[error("could not sign: {0}")]
    Signing(String),
}

impl Error {
    /// Label for `..._errors_total{reason}` counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MalformedEnvelope => "malformed_envelope",
            Error::BadKey => "bad_key",
            Error::WrongType => "wrong_type",
            Error::BadSignature => "bad_signature",
            Error::MalformedRecord => "malformed_record",
            Error::PeerIdMismatch => "peer_id_mismatch",
            Error::WrongPeer => "wrong_peer",
            Error::Stale { .. } => "stale_seq",
            Error::Signing(_) => "signing",
        }
    }
}

/// Which envelope format a received record used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// RFC 0003 (go-libp2p, js-libp2p, Pylon).
    Rfc0003,
    /// rust-libp2p's legacy routing-state record.
    LegacyRoutingState,
}

impl RecordFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::Rfc0003 => "rfc0003",
            RecordFormat::LegacyRoutingState => "legacy",
        }
    }
}

/// A peer record whose envelope signature and key binding have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeerRecord {
    peer_id: PeerId,
    seq: u64,
    addrs: Vec<Multiaddr>,
    format: RecordFormat,
    envelope: Vec<u8>,
}

impl VerifiedPeerRecord {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn addrs(&self) -> &[Multiaddr] {
        &self.addrs
    }
    pub fn format(&self) -> RecordFormat {
        self.format
    }
    /// The envelope bytes exactly as signed, to store and to hand on unchanged.
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
}

//= specs/RFC/0002-signed-envelopes.md#signature-production--verification
//# the signature is over the concatenation of the domain string, the payload type and
//# the payload, each prefixed with its length as an unsigned varint.
fn signing_input(domain: &str, payload_type: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(domain.len() + payload_type.len() + payload.len() + 9);
    for part in [domain.as_bytes(), payload_type, payload] {
        varint::encode(part.len() as u64, &mut buf);
        buf.extend_from_slice(part);
    }
    buf
}

/// Seals our own addresses into an RFC 0003 record in a signed envelope.
pub fn seal_peer_record(key: &Keypair, seq: u64, addrs: &[Multiaddr]) -> Result<Vec<u8>, Error> {
    let record = proto::PeerRecord {
        peer_id: key.public().to_peer_id().to_bytes(),
        seq,
        addresses: addrs
            .iter()
            .map(|a| proto::AddressInfo {
                multiaddr: a.to_vec(),
            })
            .collect(),
    };
    seal(
        key,
        PEER_RECORD_DOMAIN,
        PEER_RECORD_PAYLOAD_TYPE,
        record.encode_to_vec(),
    )
}

/// Seals an arbitrary payload; public so tests can forge legacy and odd envelopes.
pub fn seal(
    key: &Keypair,
    domain: &str,
    payload_type: &[u8],
    payload: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    let signature = key
        .sign(&signing_input(domain, payload_type, &payload))
        .map_err(|e| Error::Signing(e.to_string()))?;
    Ok(proto::Envelope {
        public_key: key.public().encode_protobuf(),
        payload_type: payload_type.to_vec(),
        payload,
        signature,
    }
    .encode_to_vec())
}

/// Opens an envelope of one `domain` and `payload_type` (a relay's reservation voucher,
/// say): the signer's key and the payload, once the signature checks out.
pub fn open(
    envelope: &[u8],
    domain: &str,
    payload_type: &[u8],
) -> Result<(PublicKey, Vec<u8>), Error> {
    let env: proto::Envelope =
        proto::decode(envelope, MAX_ENVELOPE_LEN).map_err(|_| Error::MalformedEnvelope)?;
    let key: PublicKey = decode_public_key(&env.public_key).map_err(|_| Error::BadKey)?;
    if env.payload_type != payload_type {
        return Err(Error::WrongType);
    }
    if !crate::identity::verify_cached(
        &key,
        &env.public_key,
        &signing_input(domain, &env.payload_type, &env.payload),
        &env.signature,
    ) {
        return Err(Error::BadSignature);
    }
    Ok((key, env.payload))
}

/// Opens and verifies a peer-record envelope in either accepted format.
///
/// Order follows RFC 0003: the signature is checked before the payload is parsed.
pub fn open_peer_record(envelope: &[u8]) -> Result<VerifiedPeerRecord, Error> {
    let env: proto::Envelope =
        proto::decode(envelope, MAX_ENVELOPE_LEN).map_err(|_| Error::MalformedEnvelope)?;
    let key: PublicKey = decode_public_key(&env.public_key).map_err(|_| Error::BadKey)?;
    let (domain, format) = if env.payload_type == PEER_RECORD_PAYLOAD_TYPE {
        (PEER_RECORD_DOMAIN, RecordFormat::Rfc0003)
    } else if env.payload_type == LEGACY_PAYLOAD_TYPE {
        (LEGACY_DOMAIN, RecordFormat::LegacyRoutingState)
    } else {
        return Err(Error::WrongType);
    };
    if !crate::identity::verify_cached(
        &key,
        &env.public_key,
        &signing_input(domain, &env.payload_type, &env.payload),
        &env.signature,
    ) {
        return Err(Error::BadSignature);
    }
    let record: proto::PeerRecord =
        proto::decode(&env.payload, MAX_ENVELOPE_LEN).map_err(|_| Error::MalformedRecord)?;
    let peer_id = PeerId::from_bytes(&record.peer_id).map_err(|_| Error::MalformedRecord)?;
    if peer_id != key.to_peer_id() {
        return Err(Error::PeerIdMismatch);
    }
    // Unparseable addresses are skipped: one odd transport must not void the record.
    let addrs = record
        .addresses
        .iter()
        .filter_map(|a| Multiaddr::try_from(a.multiaddr.clone()).ok())
        .take(MAX_RECORD_ADDRS)
        .collect();
    Ok(VerifiedPeerRecord {
        peer_id,
        seq: record.seq,
        addrs,
        format,
        envelope: envelope.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<Multiaddr> {
        vec![
            "/ip4/1.2.3.4/tcp/4001".parse().unwrap(),
            "/ip6/::1/tcp/4001".parse().unwrap(),
        ]
    }

    #[test]
    fn seal_open_round_trip() {
        let key = Keypair::generate_ed25519();
        let env = seal_peer_record(&key, 7, &addrs()).unwrap();
        let rec = open_peer_record(&env).unwrap();
        assert_eq!(rec.peer_id(), key.public().to_peer_id());
        assert_eq!(rec.seq(), 7);
        assert_eq!(rec.addrs(), addrs().as_slice());
        assert_eq!(rec.format(), RecordFormat::Rfc0003);
        assert_eq!(rec.envelope(), env.as_slice());
    }

    #[test]
    fn legacy_format_accepted_and_marked() {
        let key = Keypair::generate_secp256k1();
        let record = proto::PeerRecord {
            peer_id: key.public().to_peer_id().to_bytes(),
            seq: 1,
            addresses: vec![],
        };
        let env = seal(
            &key,
            LEGACY_DOMAIN,
            LEGACY_PAYLOAD_TYPE,
            record.encode_to_vec(),
        )
        .unwrap();
        assert_eq!(
            open_peer_record(&env).unwrap().format(),
            RecordFormat::LegacyRoutingState
        );
        // Legacy payload type signed under the RFC domain: the signature does not verify.
        let mixed = seal(
            &key,
            PEER_RECORD_DOMAIN,
            LEGACY_PAYLOAD_TYPE,
            record.encode_to_vec(),
        )
        .unwrap();
        assert_eq!(open_peer_record(&mixed), Err(Error::BadSignature));
    }

    #[test]
    fn tampering_is_detected() {
        let key = Keypair::generate_ed25519();
        let env = seal_peer_record(&key, 1, &addrs()).unwrap();
        let mut msg: proto::Envelope = proto::decode(&env, MAX_ENVELOPE_LEN).unwrap();
        msg.payload[3] ^= 1;
        assert_eq!(
            open_peer_record(&msg.encode_to_vec()),
            Err(Error::BadSignature)
        );

        // A record naming another peer, signed by us.
        let other = Keypair::generate_ed25519();
        let record = proto::PeerRecord {
            peer_id: other.public().to_peer_id().to_bytes(),
            seq: 1,
            addresses: vec![],
        };
        let env = seal(
            &key,
            PEER_RECORD_DOMAIN,
            PEER_RECORD_PAYLOAD_TYPE,
            record.encode_to_vec(),
        )
        .unwrap();
        assert_eq!(open_peer_record(&env), Err(Error::PeerIdMismatch));

        let env = seal(&key, PEER_RECORD_DOMAIN, b"/other", vec![]).unwrap();
        assert_eq!(open_peer_record(&env), Err(Error::WrongType));
        let env = seal(
            &key,
            PEER_RECORD_DOMAIN,
            PEER_RECORD_PAYLOAD_TYPE,
            vec![0xff, 0xff],
        )
        .unwrap();
        assert_eq!(open_peer_record(&env), Err(Error::MalformedRecord));
        assert_eq!(open_peer_record(&[1, 2, 3]), Err(Error::MalformedEnvelope));
        assert_eq!(
            open_peer_record(&vec![0u8; MAX_ENVELOPE_LEN + 1]),
            Err(Error::MalformedEnvelope)
        );
    }
}
