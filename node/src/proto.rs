//! Wire messages (protobuf, via prost derive — no build script, no protoc).
//!
//! Field numbers and proto2/proto3 flavours follow the specs each message comes from:
//! `specs/noise/README.md`, `specs/identify/README.md`, `specs/RFC/0002-signed-envelopes.md`,
//! `specs/RFC/0003-routing-records.md`. Decoding untrusted bytes always goes through
//! [`decode`], which bounds the input size first.

use prost::Message;

/// `NoiseExtensions` (specs/noise, proto2).
#[derive(Clone, PartialEq, Message)]
pub struct NoiseExtensions {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub webtransport_certhashes: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "2")]
    pub stream_muxers: Vec<String>,
}

/// `NoiseHandshakePayload` (specs/noise, proto2).
#[derive(Clone, PartialEq, Message)]
pub struct NoiseHandshakePayload {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub identity_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub identity_sig: Option<Vec<u8>>,
    #[prost(message, optional, tag = "4")]
    pub extensions: Option<NoiseExtensions>,
}

/// `Identify` (specs/identify, proto2).
#[derive(Clone, PartialEq, Message)]
pub struct Identify {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub public_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub listen_addrs: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "3")]
    pub protocols: Vec<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub observed_addr: Option<Vec<u8>>,
    #[prost(string, optional, tag = "5")]
    pub protocol_version: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub agent_version: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub signed_peer_record: Option<Vec<u8>>,
}

/// `Envelope` (RFC 0002, proto3). `public_key` holds the encoded `PublicKey` message.
#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(bytes = "vec", tag = "1")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload_type: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub signature: Vec<u8>,
}

/// `PeerRecord.AddressInfo` (RFC 0003, proto3).
#[derive(Clone, PartialEq, Message)]
pub struct AddressInfo {
    #[prost(bytes = "vec", tag = "1")]
    pub multiaddr: Vec<u8>,
}

/// `PeerRecord` (RFC 0003, proto3).
#[derive(Clone, PartialEq, Message)]
pub struct PeerRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub peer_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(message, repeated, tag = "3")]
    pub addresses: Vec<AddressInfo>,
}

/// Why untrusted protobuf bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed protobuf: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Decodes a message from untrusted bytes, refusing anything longer than `max` first.
pub fn decode<M: Message + Default>(bytes: &[u8], max: usize) -> Result<M, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(M::decode(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_round_trip_and_garbage() {
        let msg = Identify {
            public_key: Some(vec![1, 2, 3]),
            listen_addrs: vec![vec![4, 127, 0, 0, 1]],
            protocols: vec!["/ipfs/ping/1.0.0".into()],
            observed_addr: None,
            protocol_version: Some("ipfs/0.1.0".into()),
            agent_version: Some("pylon".into()),
            signed_peer_record: Some(vec![9; 10]),
        };
        let bytes = msg.encode_to_vec();
        assert_eq!(decode::<Identify>(&bytes, 1024).unwrap(), msg);
        assert!(matches!(
            decode::<Identify>(&bytes, 4),
            Err(DecodeError::TooLarge { .. })
        ));
        // Truncated in the middle of a field, then plain garbage.
        assert!(decode::<Identify>(&bytes[..bytes.len() - 3], 1024).is_err());
        assert!(decode::<Identify>(&[0xff, 0xff, 0xff, 0xff], 1024).is_err());
        // Wrong wire type for a known field.
        assert!(decode::<Identify>(&[0x08, 0x01], 1024).is_err());
    }
}
