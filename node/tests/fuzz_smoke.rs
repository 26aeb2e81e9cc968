//! Random and mutated input into every decoder a remote can reach: each returns an error
//! or a value, never panics. Seeded, so a failure reproduces.
#![allow(clippy::unwrap_used)]

use prost::Message;
use pylon_node::{identity, multistream, noise, proto, record, varint, Keypair};
use rand::{Rng, RngCore, SeedableRng};

fn inputs(key: &Keypair) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e3779b97f4a7c15);
    // Valid messages to mutate, so the mutations reach deep into the decoders.
    let seeds = vec![
        record::seal_peer_record(key, 7, &["/ip4/1.2.3.4/tcp/1".parse().unwrap()]).unwrap(),
        key.public().encode_protobuf(),
        proto::Identify {
            public_key: Some(key.public().encode_protobuf()),
            listen_addrs: vec![vec![4, 1, 2, 3, 4, 6, 0, 1]],
            protocols: vec!["/ipfs/ping/1.0.0".into()],
            ..Default::default()
        }
        .encode_to_vec(),
        varint::length_prefixed(b"/multistream/1.0.0\n"),
    ];
    let mut out = Vec::new();
    for _ in 0..3000 {
        let len = rng.random_range(0..200);
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        out.push(buf);
    }
    for seed in &seeds {
        for _ in 0..1500 {
            let mut m = seed.clone();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !m.is_empty() => {
                        let i = rng.random_range(0..m.len());
                        m[i] ^= 1 << rng.random_range(0..8);
                    }
                    1 if !m.is_empty() => m.truncate(rng.random_range(0..m.len())),
                    _ => m.push(rng.random()),
                }
            }
            out.push(m);
        }
    }
    out
}

#[test]
fn decoders_never_panic() {
    let key = Keypair::generate_ed25519();
    let all = inputs(&key);
    assert_eq!(all.len(), 9000);
    for input in all {
        let _ = varint::decode(&input);
        let _ = varint::split_frame(&input, 1024);
        let _ = proto::decode::<proto::Identify>(&input, 64 * 1024);
        let _ = proto::decode::<proto::NoiseHandshakePayload>(&input, 64 * 1024);
        let _ = identity::decode_public_key(&input);
        let _ = noise::verify_payload(&input, &[7u8; 32]);
        if let Ok(r) = record::open_peer_record(&input) {
            // A mutation may survive only where the signature does not reach (say, an
            // unknown envelope field): what verifies is exactly what the key signed.
            assert_eq!(r.peer_id(), key.public().to_peer_id());
            assert_eq!(r.seq(), 7);
            assert_eq!(
                r.addrs(),
                &["/ip4/1.2.3.4/tcp/1"
                    .parse::<multiaddr::Multiaddr>()
                    .unwrap()]
            );
        }
    }
}

#[tokio::test]
async fn multistream_listener_survives_garbage() {
    for input in inputs(&Keypair::generate_ed25519()).into_iter().take(3000) {
        let mut io = tokio::io::join(std::io::Cursor::new(input), tokio::io::sink());
        let _ = multistream::listener_select(&mut io, |_| true).await;
        let mut lazy = multistream::Negotiated::lazy(
            tokio::io::join(std::io::Cursor::new(vec![1u8, 2, 3]), tokio::io::sink()),
            "/x",
        );
        let mut buf = [0u8; 8];
        let _ = tokio::io::AsyncReadExt::read(&mut lazy, &mut buf).await;
    }
}
