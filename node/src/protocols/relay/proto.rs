//! The circuit relay v2 wire messages (`specs/relay/circuit-v2.md`, "Protobuf"), their
//! status codes, and the checked forms the relay and its clients act on.
//!
//! Every message travels as one length-prefixed protobuf frame ([`read`], [`write`]),
//! bounded by [`MAX_MESSAGE`]. After a `STATUS: OK` that opens a circuit the same stream
//! carries the relayed bytes, so reading never takes more than the one frame.

use multiaddr::Multiaddr;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::identity::PeerId;
use crate::varint::{self, FrameError};

/// The largest message either side accepts (a reservation with many addresses and a
/// voucher is well under 2 KiB).
pub const MAX_MESSAGE: usize = 4096;

/// `HopMessage`.
#[derive(Clone, PartialEq, Message)]
pub struct HopMessage {
    /// [`HopType`] (an enum on the wire: the same varint).
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub peer: Option<Peer>,
    #[prost(message, optional, tag = "3")]
    pub reservation: Option<Reservation>,
    #[prost(message, optional, tag = "4")]
    pub limit: Option<Limit>,
    /// [`Status`].
    #[prost(int32, optional, tag = "5")]
    pub status: Option<i32>,
}

/// `StopMessage`.
#[derive(Clone, PartialEq, Message)]
pub struct StopMessage {
    /// [`StopType`].
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub peer: Option<Peer>,
    #[prost(message, optional, tag = "3")]
    pub limit: Option<Limit>,
    /// [`Status`].
    #[prost(int32, optional, tag = "4")]
    pub status: Option<i32>,
}

/// `Peer`.
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub id: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
}

/// `Reservation`.
#[derive(Clone, PartialEq, Message)]
pub struct Reservation {
    /// Expiry, UNIX seconds (UTC).
    #[prost(uint64, optional, tag = "1")]
    pub expire: Option<u64>,
    /// The relay's public addresses with its `/p2p/`, without `/p2p-circuit`.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
    /// A signed envelope ([`super::voucher`]).
    #[prost(bytes = "vec", optional, tag = "3")]
    pub voucher: Option<Vec<u8>>,
}

/// `Limit`: 0 or absent means no limit of that kind.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Limit {
    /// Seconds.
    #[prost(uint32, optional, tag = "1")]
    pub duration: Option<u32>,
    /// Bytes in each direction.
    #[prost(uint64, optional, tag = "2")]
    pub data: Option<u64>,
}

/// `Voucher`, the payload of a reservation voucher envelope (canonical: fields in order).
#[derive(Clone, PartialEq, Message)]
pub struct Voucher {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub relay: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub peer: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "3")]
    pub expiration: Option<u64>,
}

/// `HopMessage.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopType {
    Reserve = 0,
    Connect = 1,
    Status = 2,
}

/// `StopMessage.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopType {
    Connect = 0,
    Status = 1,
}

/// `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 100,
    ReservationRefused = 200,
    ResourceLimitExceeded = 201,
    PermissionDenied = 202,
    ConnectionFailed = 203,
    NoReservation = 204,
    MalformedMessage = 400,
    UnexpectedMessage = 401,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Status> {
        [
            Status::Ok,
            Status::ReservationRefused,
            Status::ResourceLimitExceeded,
            Status::PermissionDenied,
            Status::ConnectionFailed,
            Status::NoReservation,
            Status::MalformedMessage,
            Status::UnexpectedMessage,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }

    /// The `status` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::ReservationRefused => "reservation_refused",
            Status::ResourceLimitExceeded => "resource_limit_exceeded",
            Status::PermissionDenied => "permission_denied",
            Status::ConnectionFailed => "connection_failed",
            Status::NoReservation => "no_reservation",
            Status::MalformedMessage => "malformed_message",
            Status::UnexpectedMessage => "unexpected_message",
        }
    }
}

/// What a client asks of the relay on a hop stream, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopRequest {
    Reserve,
    Connect { peer: PeerId },
}

impl HopRequest {
    /// Checks a hop message a client sent: a `STATUS` (or an unknown type) is unexpected,
    /// a `CONNECT` without a valid peer id malformed.
    pub fn parse(msg: &HopMessage) -> Result<HopRequest, Status> {
        match msg.r#type {
            Some(t) if t == HopType::Reserve as i32 => Ok(HopRequest::Reserve),
            Some(t) if t == HopType::Connect as i32 => {
                let id = msg
                    .peer
                    .as_ref()
                    .and_then(|p| p.id.as_deref())
                    .ok_or(Status::MalformedMessage)?;
                let peer = PeerId::from_bytes(id).map_err(|_| Status::MalformedMessage)?;
                Ok(HopRequest::Connect { peer })
            }
            Some(t) if t == HopType::Status as i32 => Err(Status::UnexpectedMessage),
            _ => Err(Status::MalformedMessage),
        }
    }
}

impl HopMessage {
    /// A `STATUS` answer.
    pub fn answer(status: Status) -> HopMessage {
        HopMessage {
            r#type: Some(HopType::Status as i32),
            status: Some(status.code()),
            ..Default::default()
        }
    }

    pub fn reserve() -> HopMessage {
        HopMessage {
            r#type: Some(HopType::Reserve as i32),
            ..Default::default()
        }
    }

    pub fn connect(peer: PeerId) -> HopMessage {
        HopMessage {
            r#type: Some(HopType::Connect as i32),
            peer: Some(Peer::of(peer)),
            ..Default::default()
        }
    }

    /// The status of a `STATUS` message (`None`: not a status, or an unknown code).
    pub fn status_of(&self) -> Option<Status> {
        (self.r#type == Some(HopType::Status as i32))
            .then_some(self.status)
            .flatten()
            .and_then(Status::from_code)
    }
}

impl StopMessage {
    /// The relay's `CONNECT` to the target: who is calling, and the circuit's limits.
    pub fn connect(from: PeerId, limit: Option<Limit>) -> StopMessage {
        StopMessage {
            r#type: Some(StopType::Connect as i32),
            peer: Some(Peer::of(from)),
            limit,
            status: None,
        }
    }

    pub fn answer(status: Status) -> StopMessage {
        StopMessage {
            r#type: Some(StopType::Status as i32),
            status: Some(status.code()),
            ..Default::default()
        }
    }

    /// The status of a `STATUS` message.
    pub fn status_of(&self) -> Option<Status> {
        (self.r#type == Some(StopType::Status as i32))
            .then_some(self.status)
            .flatten()
            .and_then(Status::from_code)
    }

    /// The caller of a `CONNECT`, checked.
    pub fn caller(&self) -> Result<PeerId, Status> {
        match self.r#type {
            Some(t) if t == StopType::Connect as i32 => {}
            Some(t) if t == StopType::Status as i32 => return Err(Status::UnexpectedMessage),
            _ => return Err(Status::MalformedMessage),
        }
        let id = self
            .peer
            .as_ref()
            .and_then(|p| p.id.as_deref())
            .ok_or(Status::MalformedMessage)?;
        PeerId::from_bytes(id).map_err(|_| Status::MalformedMessage)
    }
}

impl Peer {
    pub fn of(id: PeerId) -> Peer {
        Peer {
            id: Some(id.to_bytes()),
            addrs: Vec::new(),
        }
    }
}

impl Limit {
    /// `None` when neither kind is limited (the message then omits the field).
    pub fn new(duration_secs: u32, data: u64) -> Option<Limit> {
        (duration_secs > 0 || data > 0).then_some(Limit {
            duration: (duration_secs > 0).then_some(duration_secs),
            data: (data > 0).then_some(data),
        })
    }
}

impl Reservation {
    /// The relay addresses of a reservation that parse.
    pub fn relay_addrs(&self) -> Vec<Multiaddr> {
        self.addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .collect()
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Too long, or not the protobuf message expected.
    #[error("malformed message")]
    Malformed,
}

impl From<FrameError> for ReadError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => ReadError::Io(e),
            FrameError::Decode(_) => ReadError::Malformed,
        }
    }
}

/// Reads one length-prefixed message, and not a byte more.
pub async fn read<M: Message + Default, R: AsyncRead + Unpin>(r: &mut R) -> Result<M, ReadError> {
    let frame = varint::read_frame(r, MAX_MESSAGE).await?;
    crate::proto::decode(&frame, MAX_MESSAGE).map_err(|_| ReadError::Malformed)
}

/// Writes one length-prefixed message and flushes it.
pub async fn write<M: Message, W: AsyncWrite + Unpin>(w: &mut W, msg: &M) -> std::io::Result<()> {
    varint::write_frame(w, &msg.encode_to_vec()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_codes_are_none() {
        for code in [100, 200, 201, 202, 203, 204, 400, 401] {
            assert_eq!(Status::from_code(code).unwrap().code(), code);
        }
        assert_eq!(Status::from_code(0), None);
        assert_eq!(Status::from_code(300), None);
    }

    #[test]
    fn hop_requests_are_checked() {
        let peer = crate::Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(
            HopRequest::parse(&HopMessage::reserve()),
            Ok(HopRequest::Reserve)
        );
        assert_eq!(
            HopRequest::parse(&HopMessage::connect(peer)),
            Ok(HopRequest::Connect { peer })
        );
        let no_peer = HopMessage {
            r#type: Some(HopType::Connect as i32),
            ..Default::default()
        };
        assert_eq!(HopRequest::parse(&no_peer), Err(Status::MalformedMessage));
        let bad_id = HopMessage {
            r#type: Some(HopType::Connect as i32),
            peer: Some(Peer {
                id: Some(vec![1, 2, 3]),
                addrs: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(HopRequest::parse(&bad_id), Err(Status::MalformedMessage));
        assert_eq!(
            HopRequest::parse(&HopMessage::answer(Status::Ok)),
            Err(Status::UnexpectedMessage)
        );
        let untyped = HopMessage::default();
        assert_eq!(HopRequest::parse(&untyped), Err(Status::MalformedMessage));
    }

    #[test]
    fn limits_are_omitted_when_unlimited() {
        assert_eq!(Limit::new(0, 0), None);
        assert_eq!(
            Limit::new(120, 0),
            Some(Limit {
                duration: Some(120),
                data: None
            })
        );
    }

    #[tokio::test]
    async fn a_read_takes_one_frame_and_leaves_the_rest() {
        let mut buf = Vec::new();
        write(&mut buf, &HopMessage::answer(Status::Ok))
            .await
            .unwrap();
        buf.extend_from_slice(b"relayed bytes");
        let mut r = &buf[..];
        let msg: HopMessage = read(&mut r).await.unwrap();
        assert_eq!(msg.status_of(), Some(Status::Ok));
        assert_eq!(r, b"relayed bytes");
    }
}
