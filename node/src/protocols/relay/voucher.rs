//! Reservation vouchers (`specs/relay/circuit-v2.md`, "Reservation Vouchers"): a signed
//! envelope in which the relay testifies that it will serve the reserving peer until the
//! expiration. Advisory today — nobody requires one to dial — but issued with every
//! reservation, as the spec says it should be (rust-libp2p's relay issues none).

use prost::Message;

use super::proto::Voucher;
use crate::identity::{Keypair, PeerId};
use crate::record;

/// The envelope's signature domain.
pub const DOMAIN: &str = "libp2p-relay-rsvp";
/// Multicodec `libp2p-relay-rsvp` (0x0302), as the two bytes go-libp2p sends (the same
/// convention as the peer record's 0x0301).
pub const PAYLOAD_TYPE: &[u8] = &[0x03, 0x02];

/// A voucher, opened and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub relay: PeerId,
    pub peer: PeerId,
    /// UNIX seconds.
    pub expiration: u64,
}

/// The relay `key` vouches for `peer` until `expiration` (UNIX seconds).
pub fn seal(key: &Keypair, peer: PeerId, expiration: u64) -> Result<Vec<u8>, record::Error> {
    let payload = Voucher {
        relay: Some(key.public().to_peer_id().to_bytes()),
        peer: Some(peer.to_bytes()),
        expiration: Some(expiration),
    };
    record::seal(key, DOMAIN, PAYLOAD_TYPE, payload.encode_to_vec())
}

/// Opens a voucher: the signature checks out and the signer is the relay it names.
pub fn open(envelope: &[u8]) -> Result<Opened, record::Error> {
    let (key, payload) = record::open(envelope, DOMAIN, PAYLOAD_TYPE)?;
    let v: Voucher = crate::proto::decode(&payload, record::MAX_ENVELOPE_LEN)
        .map_err(|_| record::Error::MalformedRecord)?;
    let id = |b: Option<Vec<u8>>| {
        b.and_then(|b| PeerId::from_bytes(&b).ok())
            .ok_or(record::Error::MalformedRecord)
    };
    let relay = id(v.relay)?;
    if relay != key.to_peer_id() {
        return Err(record::Error::PeerIdMismatch);
    }
    Ok(Opened {
        relay,
        peer: id(v.peer)?,
        expiration: v.expiration.ok_or(record::Error::MalformedRecord)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voucher_opens_to_what_was_sealed_and_nothing_else() {
        let relay = Keypair::generate_ed25519();
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let sealed = seal(&relay, peer, 1_900_000_000).unwrap();
        assert_eq!(
            open(&sealed).unwrap(),
            Opened {
                relay: relay.public().to_peer_id(),
                peer,
                expiration: 1_900_000_000
            }
        );
        // A peer record is not a voucher.
        let record = record::seal_peer_record(&relay, 1, &[]).unwrap();
        assert!(matches!(open(&record), Err(record::Error::WrongType)));
        // A flipped byte breaks the signature (or the envelope).
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(&bad).is_err());
    }
}
