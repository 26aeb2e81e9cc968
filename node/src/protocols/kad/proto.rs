//! Kademlia wire messages (`specs/kad-dht/README.md#rpc-messages`) and their framing:
//! every message travels as an unsigned-varint length prefix and a protobuf body.

use prost::Message as _;

//= specs/kad-dht/README.md#rpc-messages
//# message Record { bytes key = 1; bytes value = 2; string timeReceived = 5; }
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(string, tag = "5")]
    pub time_received: String,
}

/// `Message.Peer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
    #[prost(enumeration = "ConnectionType", tag = "3")]
    pub connection: i32,
}

/// `Message`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(enumeration = "MessageType", tag = "1")]
    pub r#type: i32,
    #[prost(int32, tag = "10")]
    pub cluster_level_raw: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub record: Option<Record>,
    #[prost(message, repeated, tag = "8")]
    pub closer_peers: Vec<Peer>,
    #[prost(message, repeated, tag = "9")]
    pub provider_peers: Vec<Peer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    PutValue = 0,
    GetValue = 1,
    AddProvider = 2,
    GetProviders = 3,
    FindNode = 4,
    Ping = 5,
}

impl MessageType {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            MessageType::PutValue => "put_value",
            MessageType::GetValue => "get_value",
            MessageType::AddProvider => "add_provider",
            MessageType::GetProviders => "get_providers",
            MessageType::FindNode => "find_node",
            MessageType::Ping => "ping",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectionType {
    NotConnected = 0,
    Connected = 1,
    CanConnect = 2,
    CannotConnect = 3,
}

impl Message {
    pub fn new(kind: MessageType, key: Vec<u8>) -> Self {
        Message {
            r#type: kind as i32,
            key,
            ..Default::default()
        }
    }

    /// The message type, or `None` for a number the spec does not define.
    pub fn kind(&self) -> Option<MessageType> {
        MessageType::try_from(self.r#type).ok()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

/// Decodes one message body (the length prefix already removed) of at most `max` bytes.
pub fn decode(bytes: &[u8], max: usize) -> Result<Message, crate::proto::DecodeError> {
    crate::proto::decode(bytes, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let mut m = Message::new(MessageType::PutValue, b"/pk/abc".to_vec());
        m.record = Some(Record {
            key: b"/pk/abc".to_vec(),
            value: vec![1, 2, 3],
            time_received: String::new(),
        });
        m.closer_peers.push(Peer {
            id: vec![0, 1],
            addrs: vec![vec![4, 127, 0, 0, 1]],
            connection: ConnectionType::Connected as i32,
        });
        let bytes = m.to_bytes();
        assert_eq!(decode(&bytes, 1024).unwrap(), m);
        assert!(decode(&bytes, bytes.len() - 1).is_err(), "over the limit");
        assert!(
            decode(&bytes[..bytes.len() - 2], 1024).is_err(),
            "truncated"
        );
        assert!(decode(&[0xff, 0xff, 0xff], 1024).is_err(), "garbage");
        // An unknown message type decodes but has no kind.
        let odd = Message {
            r#type: 42,
            ..Default::default()
        };
        assert_eq!(decode(&odd.to_bytes(), 64).unwrap().kind(), None);
    }
}
