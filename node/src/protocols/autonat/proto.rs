//! AutoNAT wire messages: v1 (`specs/autonat/autonat-v1.md`, proto2) and v2
//! (`specs/autonat/autonat-v2.md`, proto3), each sent length-prefixed with an unsigned
//! varint ([`crate::varint::write_frame`] / [`crate::varint::read_frame`]).
//!
//! Not here: which addresses to dial and whether to (the server's policy, in the AutoNAT
//! role), and what the answers mean for our own addresses (the client,
//! [`super::client`]).

use multiaddr::Multiaddr;
use prost::Message;

use crate::identity::PeerId;

/// The v1 protocol id.
pub const V1_PROTOCOL: &str = "/libp2p/autonat/1.0.0";
/// The v2 request protocol id (client → server).
pub const V2_DIAL_REQUEST: &str = "/libp2p/autonat/2/dial-request";
/// The v2 dial-back protocol id (server → client, on the dial-back connection).
pub const V2_DIAL_BACK: &str = "/libp2p/autonat/2/dial-back";

/// The largest message either side accepts (ours). A `DialDataResponse` carries at most
/// [`MAX_DIAL_DATA_CHUNK`] bytes of data; a request lists at most a few dozen addresses.
pub const MAX_MESSAGE: usize = 8 * 1024;

//= specs/autonat/autonat-v2.md#amplification-attack-prevention
//# the client transfers these bytes wrapped in `DialDataResponse` protobufs where the
//# `data` field in each individual protobuf is limited to 4096 bytes in length.
pub const MAX_DIAL_DATA_CHUNK: usize = 4096;

//= specs/autonat/autonat-v2.md#amplification-attack-prevention
//# servers SHOULD ask for 30k to 100k bytes.
pub const MIN_DIAL_DATA: u64 = 30_000;
pub const MAX_DIAL_DATA: u64 = 100_000;

// ---- v1 -------------------------------------------------------------------------------

/// v1 `Message`.
#[derive(Clone, PartialEq, Message)]
pub struct V1Message {
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub dial: Option<V1Dial>,
    #[prost(message, optional, tag = "3")]
    pub dial_response: Option<V1DialResponse>,
}

/// v1 `Message.PeerInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct V1PeerInfo {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub id: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
}

/// v1 `Message.Dial`.
#[derive(Clone, PartialEq, Message)]
pub struct V1Dial {
    #[prost(message, optional, tag = "1")]
    pub peer: Option<V1PeerInfo>,
}

/// v1 `Message.DialResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct V1DialResponse {
    #[prost(int32, optional, tag = "1")]
    pub status: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub status_text: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub addr: Option<Vec<u8>>,
}

/// v1 `MessageType.DIAL`.
pub const V1_DIAL: i32 = 0;
/// v1 `MessageType.DIAL_RESPONSE`.
pub const V1_DIAL_RESPONSE: i32 = 1;

/// v1 `ResponseStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V1Status {
    Ok,
    DialError,
    DialRefused,
    BadRequest,
    InternalError,
}

impl V1Status {
    pub fn code(self) -> i32 {
        match self {
            V1Status::Ok => 0,
            V1Status::DialError => 100,
            V1Status::DialRefused => 101,
            V1Status::BadRequest => 200,
            V1Status::InternalError => 300,
        }
    }

    pub fn from_code(code: i32) -> Option<V1Status> {
        Some(match code {
            0 => V1Status::Ok,
            100 => V1Status::DialError,
            101 => V1Status::DialRefused,
            200 => V1Status::BadRequest,
            300 => V1Status::InternalError,
            _ => return None,
        })
    }

    /// The `response_status` label of go-libp2p's `libp2p_autonat_*` counters.
    pub fn label(self) -> &'static str {
        match self {
            V1Status::Ok => "ok",
            V1Status::DialError => "dial error",
            V1Status::DialRefused => "dial refused",
            V1Status::BadRequest => "bad request",
            V1Status::InternalError => "internal error",
        }
    }
}

/// A v1 `DIAL` request, checked: who asks, and the addresses that parsed (others are
/// skipped, as the spec's lists are best effort).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Request {
    /// The peer id the request names, if it names one.
    pub peer: Option<PeerId>,
    pub addrs: Vec<Multiaddr>,
}

impl V1Message {
    pub fn dial(peer: PeerId, addrs: &[Multiaddr]) -> V1Message {
        V1Message {
            r#type: Some(V1_DIAL),
            dial: Some(V1Dial {
                peer: Some(V1PeerInfo {
                    id: Some(peer.to_bytes()),
                    addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                }),
            }),
            dial_response: None,
        }
    }

    pub fn response(status: V1Status, text: &str, addr: Option<&Multiaddr>) -> V1Message {
        V1Message {
            r#type: Some(V1_DIAL_RESPONSE),
            dial: None,
            dial_response: Some(V1DialResponse {
                status: Some(status.code()),
                status_text: (!text.is_empty()).then(|| text.to_owned()),
                addr: addr.map(|a| a.to_vec()),
            }),
        }
    }

    /// The request in a `DIAL` message; `Err(BadRequest)` for anything else (a response, a
    /// missing type, a missing peer info, a peer id that does not parse).
    pub fn request(&self) -> Result<V1Request, V1Status> {
        if self.r#type != Some(V1_DIAL) {
            return Err(V1Status::BadRequest);
        }
        let info = self
            .dial
            .as_ref()
            .and_then(|d| d.peer.as_ref())
            .ok_or(V1Status::BadRequest)?;
        let peer = match &info.id {
            Some(id) => Some(PeerId::from_bytes(id).map_err(|_| V1Status::BadRequest)?),
            None => None,
        };
        Ok(V1Request {
            peer,
            addrs: parse_addrs(&info.addrs),
        })
    }

    /// The status and dialed address of a `DIAL_RESPONSE`; `None` if this is not one or its
    /// status is missing or unknown.
    pub fn answer(&self) -> Option<(V1Status, Option<Multiaddr>)> {
        if self.r#type != Some(V1_DIAL_RESPONSE) {
            return None;
        }
        let r = self.dial_response.as_ref()?;
        let status = V1Status::from_code(r.status?)?;
        let addr = r
            .addr
            .as_ref()
            .and_then(|a| Multiaddr::try_from(a.clone()).ok());
        Some((status, addr))
    }
}

// ---- v2 -------------------------------------------------------------------------------

/// v2 `Message` (a `oneof`).
#[derive(Clone, PartialEq, Message)]
pub struct V2Message {
    #[prost(oneof = "V2Msg", tags = "1, 2, 3, 4")]
    pub msg: Option<V2Msg>,
}

/// v2 `Message.msg`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum V2Msg {
    #[prost(message, tag = "1")]
    DialRequest(DialRequest),
    #[prost(message, tag = "2")]
    DialResponse(DialResponse),
    #[prost(message, tag = "3")]
    DialDataRequest(DialDataRequest),
    #[prost(message, tag = "4")]
    DialDataResponse(DialDataResponse),
}

/// v2 `DialRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct DialRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub addrs: Vec<Vec<u8>>,
    #[prost(fixed64, tag = "2")]
    pub nonce: u64,
}

/// v2 `DialDataRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct DialDataRequest {
    #[prost(uint32, tag = "1")]
    pub addr_idx: u32,
    #[prost(uint64, tag = "2")]
    pub num_bytes: u64,
}

/// v2 `DialResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DialResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(uint32, tag = "2")]
    pub addr_idx: u32,
    #[prost(int32, tag = "3")]
    pub dial_status: i32,
}

/// v2 `DialDataResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DialDataResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// v2 `DialBack` (sent bare on the dial-back stream).
#[derive(Clone, PartialEq, Message)]
pub struct DialBack {
    #[prost(fixed64, tag = "1")]
    pub nonce: u64,
}

/// v2 `DialBackResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DialBackResponse {
    /// `DialBackStatus.OK` = 0, the only value.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// v2 `DialResponse.ResponseStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseStatus {
    InternalError,
    RequestRejected,
    DialRefused,
    Ok,
}

impl ResponseStatus {
    pub fn code(self) -> i32 {
        match self {
            ResponseStatus::InternalError => 0,
            ResponseStatus::RequestRejected => 100,
            ResponseStatus::DialRefused => 101,
            ResponseStatus::Ok => 200,
        }
    }

    pub fn from_code(code: i32) -> Option<ResponseStatus> {
        Some(match code {
            0 => ResponseStatus::InternalError,
            100 => ResponseStatus::RequestRejected,
            101 => ResponseStatus::DialRefused,
            200 => ResponseStatus::Ok,
            _ => return None,
        })
    }

    /// The enum name, as go-libp2p's `response_status` label has it.
    pub fn label(self) -> &'static str {
        match self {
            ResponseStatus::InternalError => "E_INTERNAL_ERROR",
            ResponseStatus::RequestRejected => "E_REQUEST_REJECTED",
            ResponseStatus::DialRefused => "E_DIAL_REFUSED",
            ResponseStatus::Ok => "OK",
        }
    }
}

/// v2 `DialStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialStatus {
    Unused,
    DialError,
    DialBackError,
    Ok,
}

impl DialStatus {
    pub fn code(self) -> i32 {
        match self {
            DialStatus::Unused => 0,
            DialStatus::DialError => 100,
            DialStatus::DialBackError => 101,
            DialStatus::Ok => 200,
        }
    }

    pub fn from_code(code: i32) -> Option<DialStatus> {
        Some(match code {
            0 => DialStatus::Unused,
            100 => DialStatus::DialError,
            101 => DialStatus::DialBackError,
            200 => DialStatus::Ok,
            _ => return None,
        })
    }

    /// The enum name, as go-libp2p's `dial_status` label has it.
    pub fn label(self) -> &'static str {
        match self {
            DialStatus::Unused => "UNUSED",
            DialStatus::DialError => "E_DIAL_ERROR",
            DialStatus::DialBackError => "E_DIAL_BACK_ERROR",
            DialStatus::Ok => "OK",
        }
    }
}

impl V2Message {
    pub fn request(addrs: &[Multiaddr], nonce: u64) -> V2Message {
        V2Message {
            msg: Some(V2Msg::DialRequest(DialRequest {
                addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                nonce,
            })),
        }
    }

    pub fn response(status: ResponseStatus, addr_idx: u32, dial: DialStatus) -> V2Message {
        V2Message {
            msg: Some(V2Msg::DialResponse(DialResponse {
                status: status.code(),
                addr_idx,
                dial_status: dial.code(),
            })),
        }
    }

    pub fn data_request(addr_idx: u32, num_bytes: u64) -> V2Message {
        V2Message {
            msg: Some(V2Msg::DialDataRequest(DialDataRequest {
                addr_idx,
                num_bytes,
            })),
        }
    }

    pub fn data(data: Vec<u8>) -> V2Message {
        V2Message {
            msg: Some(V2Msg::DialDataResponse(DialDataResponse { data })),
        }
    }
}

/// The addresses that parse as multiaddrs, each with its index in the request (the index
/// a v2 answer names); the rest are skipped.
pub fn parse_indexed(raw: &[Vec<u8>]) -> Vec<(usize, Multiaddr)> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, a)| Multiaddr::try_from(a.clone()).ok().map(|m| (i, m)))
        .collect()
}

fn parse_addrs(raw: &[Vec<u8>]) -> Vec<Multiaddr> {
    parse_indexed(raw).into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::proto::decode;

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_dial_round_trips_and_bad_requests_are_named() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let addrs = vec![
            m("/ip4/11.0.0.1/tcp/4001"),
            m("/ip4/11.0.0.1/udp/4001/quic-v1"),
        ];
        let bytes = V1Message::dial(peer, &addrs).encode_to_vec();
        let back: V1Message = decode(&bytes, MAX_MESSAGE).unwrap();
        assert_eq!(
            back.request().unwrap(),
            V1Request {
                peer: Some(peer),
                addrs
            }
        );
        // A response is no request; neither is an empty message nor a bad peer id.
        let resp = V1Message::response(V1Status::Ok, "", Some(&m("/ip4/11.0.0.1/tcp/1")));
        assert_eq!(resp.request(), Err(V1Status::BadRequest));
        assert_eq!(
            resp.answer(),
            Some((V1Status::Ok, Some(m("/ip4/11.0.0.1/tcp/1"))))
        );
        assert_eq!(V1Message::default().request(), Err(V1Status::BadRequest));
        let mut bad = V1Message::dial(peer, &[]);
        bad.dial.as_mut().unwrap().peer.as_mut().unwrap().id = Some(vec![1, 2, 3]);
        assert_eq!(bad.request(), Err(V1Status::BadRequest));
        // Garbage address bytes are skipped, not fatal.
        let mut junk = V1Message::dial(peer, &[m("/ip4/11.0.0.1/tcp/1")]);
        junk.dial
            .as_mut()
            .unwrap()
            .peer
            .as_mut()
            .unwrap()
            .addrs
            .push(vec![0xff, 0xff]);
        assert_eq!(junk.request().unwrap().addrs.len(), 1);
        // Unknown statuses are no answer.
        let mut odd = V1Message::response(V1Status::Ok, "", None);
        odd.dial_response.as_mut().unwrap().status = Some(7);
        assert_eq!(odd.answer(), None);
        for s in [
            V1Status::Ok,
            V1Status::DialError,
            V1Status::DialRefused,
            V1Status::BadRequest,
            V1Status::InternalError,
        ] {
            assert_eq!(V1Status::from_code(s.code()), Some(s));
        }
    }

    #[test]
    fn v2_messages_round_trip() {
        let addrs = vec![m("/ip4/11.0.0.1/tcp/4001")];
        for msg in [
            V2Message::request(&addrs, 0xdead_beef_0123_4567),
            V2Message::response(ResponseStatus::Ok, 3, DialStatus::DialBackError),
            V2Message::data_request(1, 30_000),
            V2Message::data(vec![0; MAX_DIAL_DATA_CHUNK]),
        ] {
            let bytes = msg.encode_to_vec();
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(decode::<V2Message>(&bytes, MAX_MESSAGE).unwrap(), msg);
        }
        let back = DialBack { nonce: u64::MAX }.encode_to_vec();
        assert_eq!(
            decode::<DialBack>(&back, MAX_MESSAGE).unwrap().nonce,
            u64::MAX
        );
        for s in [
            ResponseStatus::InternalError,
            ResponseStatus::RequestRejected,
            ResponseStatus::DialRefused,
            ResponseStatus::Ok,
        ] {
            assert_eq!(ResponseStatus::from_code(s.code()), Some(s));
        }
        for s in [
            DialStatus::Unused,
            DialStatus::DialError,
            DialStatus::DialBackError,
            DialStatus::Ok,
        ] {
            assert_eq!(DialStatus::from_code(s.code()), Some(s));
        }
        // An empty message has no `msg`; truncation is an error.
        assert_eq!(
            decode::<V2Message>(&[], MAX_MESSAGE).unwrap(),
            V2Message { msg: None }
        );
        let bytes = V2Message::request(&addrs, 1).encode_to_vec();
        assert!(decode::<V2Message>(&bytes[..bytes.len() - 2], MAX_MESSAGE).is_err());
        assert!(decode::<V2Message>(&bytes, 4).is_err());
        // Indexes survive skipped garbage.
        let raw = vec![vec![0xff], m("/ip4/11.0.0.2/tcp/1").to_vec()];
        assert_eq!(parse_indexed(&raw), vec![(1, m("/ip4/11.0.0.2/tcp/1"))]);
    }
}
