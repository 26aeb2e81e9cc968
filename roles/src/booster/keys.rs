//! The heads' identities: Ed25519 keys derived from the node key and a head's index,
//! deterministic (a restart brings back the same heads) and balanced (any first n heads
//! split the keyspace evenly), with no central service handing out IDs.
//!
//! How: one stream of candidate keys comes from the node's secret — candidate `c` is the
//! Ed25519 key whose seed is `SHA-256(DOMAIN ‖ len ‖ secret ‖ c)`. Each candidate's
//! Kademlia key (the SHA-256 of its PeerId, [`Key::from_peer`]) starts with some
//! `depth`-bit prefix `p`; the `j`-th candidate (from 0) with prefix `p` is head
//! `j · 2^depth + bit_reverse(p)`. So head `i` sits in the cell `bit_reverse(i mod
//! 2^depth)`, and the cells of heads 0, 1, 2, … follow the bit-reversal (van der Corput)
//! order: 0, ½, ¼, ¾, ⅛, … of the keyspace. Any first n heads then leave no gap wider
//! than two cells of size 1/2^⌊log2 n⌋, so the controller may grow and shrink the head
//! count from the top and the set stays balanced.
//!
//! The cost: one head alone takes about 2^depth candidates ([`head_keypair`]); a run of
//! heads takes one scan of the stream until each of their cells is hit
//! ([`head_keypairs`], a coupon collector: about 2^depth · ln n candidates for n ≤
//! 2^depth heads), which is what a booster starting many heads should call.
//!
//! What it is not: a secret. Whoever holds the node key can derive every head key, as
//! they can impersonate the node itself; nobody else can. Changing `depth` (from
//! `max_heads`, [`depth_for`]) changes every head's identity.

use pylon_node::identity::Keypair;
use pylon_node::protocols::kad::Key;
use pylon_node::PeerId;

/// Domain separation: these seeds are for booster heads and nothing else.
const DOMAIN: &[u8] = b"pylon/booster/head-key/v1";

/// The fewest prefix bits a head's key is balanced on.
pub const MIN_DEPTH: u8 = 8;

/// The most: 2^16 cells is past any sensible head count, and candidates grow as 2^depth.
pub const MAX_DEPTH: u8 = 16;

/// The prefix length the heads of a booster of up to `max_heads` heads are balanced on:
/// at least [`MIN_DEPTH`], at least ⌈log2 max_heads⌉ (every head in a cell of its own),
/// at most [`MAX_DEPTH`].
pub fn depth_for(max_heads: u32) -> u8 {
    let bits = 32 - max_heads.saturating_sub(1).leading_zeros();
    (bits as u8).clamp(MIN_DEPTH, MAX_DEPTH)
}

/// The `depth`-bit cell of the keyspace head `index` sits in: `bit_reverse(index mod
/// 2^depth)`, as the top `depth` bits of a key.
pub fn cell_of(index: u32, depth: u8) -> u32 {
    let depth = depth.clamp(1, MAX_DEPTH);
    let low = index & ((1u32 << depth) - 1);
    low.reverse_bits() >> (32 - u32::from(depth))
}

/// The key of head `index` of the node with key `node_key`, balanced on `depth` prefix
/// bits (see the module doc). Deterministic: same inputs, same key.
pub fn head_keypair(node_key: &Keypair, index: u32, depth: u8) -> Keypair {
    let stream = Candidates::new(node_key, depth);
    let (cell, occurrence) = (cell_of(index, stream.depth), index >> stream.depth);
    let mut seen = 0u32;
    let mut c = 0u64;
    loop {
        if let Some((key, kad_key)) = stream.candidate(c) {
            if prefix_of(&kad_key, stream.depth) == cell {
                if seen == occurrence {
                    return key;
                }
                seen += 1;
            }
        }
        c += 1;
    }
}

/// The keys of heads `indices`, in the order given, with one scan of the candidate
/// stream: the same keys as [`head_keypair`] gives one by one, much faster for many.
pub fn head_keypairs(node_key: &Keypair, indices: &[u32], depth: u8) -> Vec<Keypair> {
    Candidates::new(node_key, depth)
        .take_heads(indices)
        .into_iter()
        .map(|(_, k)| k)
        .collect()
}

/// The top `depth` bits of a key.
pub fn prefix_of(key: &Key, depth: u8) -> u32 {
    let depth = depth.clamp(1, MAX_DEPTH);
    let h = key.hash();
    let top = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    top >> (32 - u32::from(depth))
}

/// The node key's secret, as seed material: its protobuf encoding (Ed25519, secp256k1,
/// ECDSA); RSA keys have none, so their (deterministic, PKCS#1 v1.5) signature of the
/// domain string stands in. If both fail — an RSA key too short to sign, which
/// `identity::load` never yields — the public key is all there is, and heads derived
/// from it are as good as public: logged as an error.
fn seed_material(node_key: &Keypair) -> Vec<u8> {
    if let Ok(secret) = node_key.to_protobuf_encoding() {
        return secret;
    }
    if let Ok(signature) = node_key.sign(DOMAIN) {
        return signature;
    }
    tracing::error!("booster: the node key yields no secret; head keys derive from its public key");
    node_key.public().encode_protobuf()
}

/// SHA-256 (the Kademlia key function is exactly that: no second hash implementation).
fn sha256(bytes: &[u8]) -> [u8; 32] {
    *Key::new(bytes).hash()
}

/// The stream of candidate keys of one node.
struct Candidates {
    material: Vec<u8>,
    own: PeerId,
    depth: u8,
}

impl Candidates {
    fn new(node_key: &Keypair, depth: u8) -> Self {
        Candidates {
            material: seed_material(node_key),
            own: node_key.public().to_peer_id(),
            depth: depth.clamp(1, MAX_DEPTH),
        }
    }

    /// Candidate `c`: its key and Kademlia key; `None` for the (astronomically unlikely)
    /// candidate that is the node itself.
    fn candidate(&self, c: u64) -> Option<(Keypair, Key)> {
        let mut input = Vec::with_capacity(DOMAIN.len() + 8 + self.material.len() + 8);
        input.extend_from_slice(DOMAIN);
        input.extend_from_slice(&(self.material.len() as u64).to_be_bytes());
        input.extend_from_slice(&self.material);
        input.extend_from_slice(&c.to_be_bytes());
        let mut seed = sha256(&input);
        let key = Keypair::ed25519_from_bytes(&mut seed).ok()?;
        let peer = key.public().to_peer_id();
        (peer != self.own).then(|| (key, Key::from_peer(&peer)))
    }

    /// Scans candidates until every index asked for has its key; returns them in the
    /// order asked (duplicates included).
    fn take_heads(&self, indices: &[u32]) -> Vec<(u32, Keypair)> {
        let cells = 1u32 << self.depth;
        // What each (cell, occurrence) is wanted for, and the hits per cell so far.
        let mut wanted: std::collections::HashMap<(u32, u32), Option<Keypair>> = indices
            .iter()
            .map(|&i| ((cell_of(i, self.depth), i >> self.depth), None))
            .collect();
        let mut missing = wanted.len();
        let mut hits = vec![0u32; cells as usize];
        let mut c = 0u64;
        while missing > 0 {
            if let Some((key, kad_key)) = self.candidate(c) {
                let cell = prefix_of(&kad_key, self.depth);
                let occurrence = hits[cell as usize];
                hits[cell as usize] += 1;
                if let Some(slot @ None) = wanted.get_mut(&(cell, occurrence)) {
                    *slot = Some(key);
                    missing -= 1;
                }
            }
            c += 1;
        }
        indices
            .iter()
            .filter_map(|&i| {
                let slot = wanted.get(&(cell_of(i, self.depth), i >> self.depth))?;
                Some((i, slot.clone()?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Instant;

    fn node_key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    fn peer(k: &Keypair) -> PeerId {
        k.public().to_peer_id()
    }

    /// The top 64 bits of a key, as a position in the keyspace.
    fn position(k: &Keypair) -> u64 {
        let h = *Key::from_peer(&peer(k)).hash();
        u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
    }

    #[test]
    fn depth_covers_the_head_count() {
        assert_eq!(depth_for(0), MIN_DEPTH);
        assert_eq!(depth_for(1), MIN_DEPTH);
        assert_eq!(depth_for(256), 8);
        assert_eq!(depth_for(257), 9);
        assert_eq!(depth_for(2015), 11);
        assert_eq!(depth_for(u32::MAX), MAX_DEPTH);
        // Van der Corput: 0, ½, ¼, ¾, …
        let cells: Vec<u32> = (0..4).map(|i| cell_of(i, 8)).collect();
        assert_eq!(cells, [0, 128, 64, 192]);
        assert_eq!(cell_of(256 + 1, 8), 128, "the index wraps at 2^depth");
    }

    #[test]
    fn heads_are_deterministic_per_node_and_differ_between_nodes() {
        let a = node_key(1);
        let one: Vec<PeerId> = (0..8).map(|i| peer(&head_keypair(&a, i, 8))).collect();
        let again: Vec<PeerId> = head_keypairs(&a, &(0..8).collect::<Vec<_>>(), 8)
            .iter()
            .map(peer)
            .collect();
        assert_eq!(one, again, "one by one and all at once agree");
        let other: Vec<PeerId> = head_keypairs(&node_key(2), &(0..8).collect::<Vec<_>>(), 8)
            .iter()
            .map(peer)
            .collect();
        for p in &one {
            assert!(!other.contains(p), "another node key, other heads");
        }
        let distinct: std::collections::HashSet<_> = one.iter().collect();
        assert_eq!(distinct.len(), one.len());
        assert_eq!(
            peer(&head_keypair(&a, 3, 8)),
            one[3],
            "the order asked is kept"
        );
        // A different depth is a different set of identities.
        assert_ne!(peer(&head_keypair(&a, 1, 9)), one[1]);
    }

    #[test]
    fn every_head_key_starts_with_its_cell_and_is_not_the_node() {
        let node = node_key(3);
        let indices: Vec<u32> = (0..300).collect();
        let heads = head_keypairs(&node, &indices, 8);
        assert_eq!(heads.len(), 300);
        for (i, k) in indices.iter().zip(&heads) {
            assert_eq!(prefix_of(&Key::from_peer(&peer(k)), 8), cell_of(*i, 8));
            assert_ne!(peer(k), peer(&node));
        }
        // Past 2^depth, a cell holds a second head, a different one.
        assert_ne!(peer(&heads[1]), peer(&heads[257]));
    }

    #[test]
    fn any_first_n_heads_are_spread_evenly() {
        let node = node_key(4);
        let depth = 8;
        let all = head_keypairs(&node, &(0..256).collect::<Vec<_>>(), depth);
        for n in [2usize, 3, 5, 8, 13, 32, 50, 100, 128, 200, 256] {
            let mut pos: Vec<u64> = all[..n].iter().map(position).collect();
            pos.sort_unstable();
            // The widest gap between neighbours, around the ring.
            let mut widest = pos[0].wrapping_sub(pos[n - 1]);
            for w in pos.windows(2) {
                widest = widest.max(w[1] - w[0]);
            }
            // Cells of size 2^-m with m = ⌊log2 n⌋ each hold one of the first 2^m heads,
            // so a gap spans at most two cells.
            let m = usize::BITS - 1 - n.leading_zeros();
            let bound = 2.0 / f64::from(1u32 << m);
            let widest = widest as f64 / 2f64.powi(64);
            assert!(widest <= bound, "n {n}: widest gap {widest} > {bound}");
            // Random keys would leave a gap of about ln(n)/n.
            println!(
                "first {n:>3} heads: widest gap {widest:.4} of the keyspace (bound {bound:.4})"
            );
        }
    }

    #[test]
    fn two_hundred_fifty_six_heads_take_little_time() {
        let node = node_key(5);
        let started = Instant::now();
        let heads = head_keypairs(&node, &(0..256).collect::<Vec<_>>(), depth_for(256));
        let batch = started.elapsed();
        let started = Instant::now();
        let single = head_keypair(&node, 255, depth_for(256));
        let one = started.elapsed();
        assert_eq!(peer(&single), peer(&heads[255]));
        // Measured, not asserted (timing depends on the machine and the build).
        println!("256 heads at depth 8: {batch:?} in one scan; one head alone: {one:?}");
    }
}
