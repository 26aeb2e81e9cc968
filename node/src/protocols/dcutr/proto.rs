//! The `HolePunch` message (`specs/relay/DCUtR.md`, "RPC messages", proto2).

use multiaddr::Multiaddr;
use prost::Message;

/// Messages longer than this are refused (the spec: 4 KiB).
pub const MAX_MESSAGE: usize = 4096;

/// `holepunch.pb.HolePunch`.
#[derive(Clone, PartialEq, Message)]
pub struct HolePunch {
    /// [`CONNECT`] or [`SYNC`] (`required` in the proto2 schema).
    #[prost(int32, required, tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub obs_addrs: Vec<Vec<u8>>,
}

/// `HolePunch.Type.CONNECT`.
pub const CONNECT: i32 = 100;
/// `HolePunch.Type.SYNC`.
pub const SYNC: i32 = 300;

impl HolePunch {
    pub fn connect(addrs: &[Multiaddr]) -> HolePunch {
        HolePunch {
            r#type: CONNECT,
            obs_addrs: addrs.iter().map(|a| a.to_vec()).collect(),
        }
    }

    pub fn sync() -> HolePunch {
        HolePunch {
            r#type: SYNC,
            obs_addrs: Vec::new(),
        }
    }

    /// Is this a `CONNECT` or a `SYNC`? `None` for any other type — including a missing
    /// one: prost decodes an absent `required` field as 0 rather than refusing it.
    pub fn kind(&self) -> Option<i32> {
        [CONNECT, SYNC]
            .contains(&self.r#type)
            .then_some(self.r#type)
    }

    /// The addresses that parse; the rest are skipped, not an error.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        self.obs_addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trips_and_a_missing_type_is_no_kind() {
        let addrs: Vec<Multiaddr> = vec![
            "/ip4/198.51.100.7/tcp/4001".parse().unwrap(),
            "/ip4/198.51.100.7/udp/4001/quic-v1".parse().unwrap(),
        ];
        let bytes = HolePunch::connect(&addrs).encode_to_vec();
        let back: HolePunch = crate::proto::decode(&bytes, MAX_MESSAGE).unwrap();
        assert_eq!(back.r#type, CONNECT);
        assert_eq!(back.addrs(), addrs);
        assert_eq!(back.kind(), Some(CONNECT));
        // A message without the (required) type decodes as type 0: no kind.
        let untyped = [0x12, 0x01, 0x00];
        let msg: HolePunch = crate::proto::decode(&untyped, MAX_MESSAGE).unwrap();
        assert_eq!(msg.kind(), None);
    }
}
