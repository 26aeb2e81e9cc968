//! Keys and the XOR metric (`specs/kad-dht/README.md#distance`).

use std::fmt;

use crate::identity::PeerId;

//= specs/kad-dht/README.md#distance
//# In all cases, the distance between two keys is `XOR(sha256(key1), sha256(key2))`.
/// A point in the keyspace: the SHA-256 of a key's bytes (a PeerId's bytes, a record key,
/// a provider multihash).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

/// The XOR distance of two keys, compared as a 256-bit big-endian number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance([u8; 32]);

impl Key {
    /// The key of arbitrary bytes.
    pub fn new(raw: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, raw);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Key(out)
    }

    pub fn from_peer(peer: &PeerId) -> Self {
        Key::new(&peer.to_bytes())
    }

    /// A key given by its hash directly.
    pub fn from_hash(hash: [u8; 32]) -> Self {
        Key(hash)
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn distance(&self, other: &Key) -> Distance {
        // Four 64-bit words: cheap in a debug build too (the simulator computes millions).
        let mut d = [0u8; 32];
        for w in 0..4 {
            let r = w * 8..w * 8 + 8;
            let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
            a.copy_from_slice(&self.0[r.clone()]);
            b.copy_from_slice(&other.0[r.clone()]);
            d[r].copy_from_slice(&(u64::from_ne_bytes(a) ^ u64::from_ne_bytes(b)).to_ne_bytes());
        }
        Distance(d)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl Distance {
    pub const ZERO: Distance = Distance([0; 32]);

    /// Leading zero bits: the length of the prefix two keys share (256 for equal keys).
    pub fn common_prefix_len(&self) -> u32 {
        let mut n = 0;
        for b in &self.0 {
            if *b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }

    /// The k-bucket a key at this distance from the local key belongs to: bucket `i` holds
    /// distances in `[2^i, 2^(i+1))`, so 255 is the far half of the keyspace. `None` for 0.
    pub fn bucket(&self) -> Option<usize> {
        let cpl = self.common_prefix_len();
        (cpl < 256).then(|| 255 - cpl as usize)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_a_metric_with_buckets_by_prefix() {
        let a = Key::new(b"a");
        let b = Key::new(b"b");
        let c = Key::new(b"c");
        assert_eq!(a.distance(&a), Distance::ZERO);
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a).bucket(), None);
        // XOR triangle: d(a,c) <= d(a,b) xor-sum d(b,c) as numbers, so d(a,c) is at most
        // d(a,b) + d(b,c); checking the bucket bound is enough here.
        let ab = a.distance(&b).bucket().unwrap();
        let bc = b.distance(&c).bucket().unwrap();
        assert!(a.distance(&c).bucket().unwrap() <= ab.max(bc));

        let mut x = [0u8; 32];
        let zero = Key::from_hash(x);
        x[0] = 0x80;
        assert_eq!(zero.distance(&Key::from_hash(x)).bucket(), Some(255));
        x[0] = 0;
        x[31] = 1;
        assert_eq!(zero.distance(&Key::from_hash(x)).bucket(), Some(0));
        x[31] = 0;
        x[1] = 0x10; // bit 12 from the top
        assert_eq!(zero.distance(&Key::from_hash(x)).common_prefix_len(), 11);
        assert_eq!(zero.distance(&Key::from_hash(x)).bucket(), Some(244));
    }

    #[test]
    fn key_is_sha256_of_the_bytes() {
        // sha256("abc")
        let k = Key::new(b"abc");
        assert_eq!(
            k.hash()[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "the SHA-256 test vector"
        );
    }
}
