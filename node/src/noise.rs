//! Noise XX security with the libp2p handshake payload (`specs/noise/README.md`).
//!
//! `Noise_XX_25519_ChaChaPoly_SHA256` via `snow`, each message framed with a 2-byte
//! big-endian length. The handshake proves the remote's libp2p identity: its payload
//! carries the identity key and a signature over `noise-libp2p-static-key:` followed by
//! its Noise static key. After the handshake, [`Stream`] encrypts in frames of up to
//! 65535 bytes and coalesces small writes until a flush.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::identity::{decode_public_key, Keypair, PeerId, PublicKey};
use crate::proto;

pub const PROTOCOL: &str = "/noise";
const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
//= specs/noise/README.md#libp2p-data-in-handshake-messages
//# signature of the static key with the prefix `noise-libp2p-static-key:`
const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";
/// Largest Noise message (spec: 65535 bytes, the 2-byte length's range).
pub const MAX_FRAME_LEN: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext that fits one frame.
pub const MAX_PLAINTEXT: usize = MAX_FRAME_LEN - TAG_LEN;
/// Largest handshake payload we accept (an RSA-8192 key, its signature, extensions).
const MAX_HANDSHAKE_PAYLOAD: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("malformed handshake payload: {0}")]
    BadPayload(String),
    #[error("identity signature over the static key does not verify")]
    BadSignature,
    #[error("no stream muxer in common")]
    NoCommonMuxer,
    #[error("connected to {got}, expected {expected}")]
    WrongPeer {
        expected: Box<PeerId>,
        got: Box<PeerId>,
    },
}

/// Per-host Noise configuration: one static DH key, signed once by the identity key.
pub struct Config {
    static_private: Vec<u8>,
    payload: Vec<u8>,
    /// Muxers we announce for inlined negotiation, in preference order.
    muxers: Vec<String>,
}

/// Most muxers we look at in a remote's list.
const MAX_MUXERS: usize = 16;

impl Config {
    /// Without inlined muxer negotiation.
    pub fn new(identity: &Keypair) -> Result<Self, Error> {
        Self::with_muxers(identity, Vec::new())
    }

    /// Announcing `muxers` in the handshake
    /// (`specs/connections/inlined-muxer-negotiation.md`).
    pub fn with_muxers(identity: &Keypair, muxers: Vec<String>) -> Result<Self, Error> {
        let builder = snow::Builder::new(params());
        let dh = builder.generate_keypair()?;
        let mut signed = STATIC_KEY_DOMAIN.to_vec();
        signed.extend_from_slice(&dh.public);
        let sig = identity
            .sign(&signed)
            .map_err(|e| Error::BadPayload(format!("signing static key: {e}")))?;
        let payload = proto::NoiseHandshakePayload {
            identity_key: Some(identity.public().encode_protobuf()),
            identity_sig: Some(sig),
            extensions: (!muxers.is_empty()).then(|| proto::NoiseExtensions {
                webtransport_certhashes: Vec::new(),
                stream_muxers: muxers.clone(),
            }),
        }
        .encode_to_vec();
        Ok(Config {
            static_private: dh.private,
            payload,
            muxers,
        })
    }
}

fn params() -> snow::params::NoiseParams {
    // The pattern string is a constant the crate knows; parsing it cannot fail.
    PATTERN
        .parse()
        .unwrap_or_else(|_| unreachable!("valid noise pattern"))
}

/// The result of a handshake: the secured stream and who is on the other side.
pub struct Output<T> {
    pub stream: Stream<T>,
    pub remote_peer: PeerId,
    pub remote_key: PublicKey,
    /// The muxer agreed inside the handshake, if both sides announced muxers.
    pub muxer: Option<String>,
}

/// Runs the XX handshake as initiator (`dialer == true`) or responder.
/// `expected` is the PeerId from the dialed multiaddr, if it had one.
pub async fn handshake<T>(
    mut io: T,
    config: &Config,
    dialer: bool,
    expected: Option<PeerId>,
) -> Result<Output<T>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let builder = snow::Builder::new(params()).local_private_key(&config.static_private)?;
    let mut state = if dialer {
        builder.build_initiator()?
    } else {
        builder.build_responder()?
    };
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut payload = vec![0u8; MAX_FRAME_LEN];
    // The remote's identity is checked as soon as its payload arrives: a dialer rejects a
    // wrong or unauthenticated responder before revealing its own identity in message 3.
    let check = |state: &snow::HandshakeState,
                 remote_payload: &[u8]|
     -> Result<(PublicKey, PeerId, Vec<String>), Error> {
        let remote_static = state
            .get_remote_static()
            .ok_or_else(|| Error::BadPayload("no remote static key".into()))?;
        let (remote_key, muxers) = verify_payload(remote_payload, remote_static)?;
        let remote_peer = remote_key.to_peer_id();
        match expected {
            Some(expected) if expected != remote_peer => Err(Error::WrongPeer {
                expected: Box::new(expected),
                got: Box::new(remote_peer),
            }),
            _ => Ok((remote_key, remote_peer, muxers)),
        }
    };
    let (remote_key, remote_peer, muxer);
    if dialer {
        // -> e
        let n = state.write_message(&[], &mut buf)?;
        write_frame(&mut io, &buf[..n]).await?;
        // <- e, ee, s, es  (responder's identity)
        let frame = read_frame(&mut io).await?;
        let n = state.read_message(&frame, &mut payload)?;
        let remote_muxers;
        (remote_key, remote_peer, remote_muxers) = check(&state, &payload[..n])?;
        muxer = pick_muxer(&config.muxers, &remote_muxers)?;
        // -> s, se  (our identity)
        let n = state.write_message(&config.payload, &mut buf)?;
        write_frame(&mut io, &buf[..n]).await?;
    } else {
        let frame = read_frame(&mut io).await?;
        state.read_message(&frame, &mut payload)?;
        let n = state.write_message(&config.payload, &mut buf)?;
        write_frame(&mut io, &buf[..n]).await?;
        let frame = read_frame(&mut io).await?;
        let n = state.read_message(&frame, &mut payload)?;
        let remote_muxers;
        (remote_key, remote_peer, remote_muxers) = check(&state, &payload[..n])?;
        muxer = pick_muxer(&remote_muxers, &config.muxers)?;
    }
    let transport = state.into_transport_mode()?;
    Ok(Output {
        stream: Stream::new(io, transport),
        remote_peer,
        remote_key,
        muxer,
    })
}

/// Checks the identity payload against the remote's static key; returns its identity key.
/// Checks the identity payload against the remote's static key; returns its identity key
/// and the muxers it announced.
pub fn verify_payload(
    payload: &[u8],
    remote_static: &[u8],
) -> Result<(PublicKey, Vec<String>), Error> {
    let msg: proto::NoiseHandshakePayload = proto::decode(payload, MAX_HANDSHAKE_PAYLOAD)
        .map_err(|e| Error::BadPayload(e.to_string()))?;
    let key_bytes = msg
        .identity_key
        .ok_or_else(|| Error::BadPayload("no identity key".into()))?;
    let sig = msg
        .identity_sig
        .ok_or_else(|| Error::BadPayload("no identity signature".into()))?;
    let key = decode_public_key(&key_bytes).map_err(|e| Error::BadPayload(e.to_string()))?;
    let mut signed = STATIC_KEY_DOMAIN.to_vec();
    signed.extend_from_slice(remote_static);
    if !key.verify(&signed, &sig) {
        return Err(Error::BadSignature);
    }
    let mut muxers = msg.extensions.map(|e| e.stream_muxers).unwrap_or_default();
    muxers.truncate(MAX_MUXERS);
    Ok((key, muxers))
}

//= specs/connections/inlined-muxer-negotiation.md#multiplexer-negotiation-over-noise
//# The multiplexer to use is determined by picking the first item from the
//# initiator's list that both parties support.
fn pick_muxer(initiator: &[String], responder: &[String]) -> Result<Option<String>, Error> {
    if initiator.is_empty() || responder.is_empty() {
        return Ok(None); // one side does not inline: fall back to multistream-select
    }
    //# If there is no overlap between the multiplexers support by client and server,
    //# the handshake MUST fail.
    initiator
        .iter()
        .find(|m| responder.contains(m))
        .cloned()
        .map(Some)
        .ok_or(Error::NoCommonMuxer)
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, msg: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    io.write_all(&out).await?;
    io.flush().await
}

async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Vec<u8>> {
    let len = io.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// An encrypted byte stream after the handshake.
pub struct Stream<T> {
    io: T,
    state: snow::TransportState,
    // Reading: raw bytes from `io` (frame header + ciphertext) and decrypted plaintext.
    rbuf: Vec<u8>,
    rlen: usize,
    plain: Vec<u8>,
    plain_pos: usize,
    // Writing: plaintext waiting to be sealed, and sealed bytes waiting to be written.
    wplain: Vec<u8>,
    wout: Vec<u8>,
    wout_pos: usize,
    read_eof: bool,
}

impl<T> Stream<T> {
    fn new(io: T, state: snow::TransportState) -> Self {
        Stream {
            io,
            state,
            // Buffers grow on demand (an idle connection should cost little memory).
            rbuf: Vec::new(),
            rlen: 0,
            plain: Vec::new(),
            plain_pos: 0,
            wplain: Vec::new(),
            wout: Vec::new(),
            wout_pos: 0,
            read_eof: false,
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream<T> {
    /// Seals buffered plaintext into `wout` (only when `wout` is drained).
    fn seal_pending(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.wout_pos, self.wout.len());
        if self.wplain.is_empty() {
            return Ok(());
        }
        self.wout.clear();
        self.wout_pos = 0;
        self.wout.resize(2 + self.wplain.len() + TAG_LEN, 0);
        let n = self
            .state
            .write_message(&self.wplain, &mut self.wout[2..])
            .map_err(|_| invalid("noise encryption failed"))?;
        self.wout[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.wout.truncate(2 + n);
        self.wplain.clear();
        Ok(())
    }

    /// Writes sealed bytes out until none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        crate::io_util::poll_write_from(&mut self.io, cx, &self.wout, &mut self.wout_pos)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = out.remaining().min(this.plain.len() - this.plain_pos);
                out.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            // Need a whole frame: 2-byte length then ciphertext.
            let need = if this.rlen < 2 {
                2
            } else {
                2 + u16::from_be_bytes([this.rbuf[0], this.rbuf[1]]) as usize
            };
            if this.rlen >= 2 && this.rlen == need {
                let frame_len = need - 2;
                this.plain.resize(frame_len, 0);
                let n = this
                    .state
                    .read_message(&this.rbuf[2..2 + frame_len], &mut this.plain)
                    .map_err(|_| invalid("noise decryption failed"))?;
                this.plain.truncate(n);
                this.plain_pos = 0;
                this.rlen = 0;
                continue;
            }
            if this.rbuf.len() < need {
                this.rbuf.resize(need, 0);
            }
            let mut rb = ReadBuf::new(&mut this.rbuf[this.rlen..need]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            if got == 0 {
                if this.rlen == 0 {
                    this.read_eof = true;
                    continue;
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            this.rlen += got;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wplain.len() == MAX_PLAINTEXT {
            ready!(this.poll_drain(cx))?;
            this.seal_pending()?;
        }
        let n = buf.len().min(MAX_PLAINTEXT - this.wplain.len());
        this.wplain.extend_from_slice(&buf[..n]);
        if this.wplain.len() == MAX_PLAINTEXT && this.wout_pos == this.wout.len() {
            this.seal_pending()?;
            // Start writing; whatever is left goes out on the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.wplain.is_empty() {
            this.seal_pending()?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        expected: Option<PeerId>,
    ) -> (
        Result<Output<tokio::io::DuplexStream>, Error>,
        Result<Output<tokio::io::DuplexStream>, Error>,
        PeerId,
        PeerId,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let ka = Keypair::generate_ed25519();
        let kb = Keypair::generate_secp256k1();
        let (ca, cb) = (Config::new(&ka).unwrap(), Config::new(&kb).unwrap());
        let (ra, rb) = tokio::join!(
            handshake(a, &ca, true, expected),
            handshake(b, &cb, false, None)
        );
        (ra, rb, ka.public().to_peer_id(), kb.public().to_peer_id())
    }

    #[tokio::test]
    async fn handshake_authenticates_and_streams_large_data() {
        let (a, b, pa, pb) = pair(None).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.remote_peer, pb);
        assert_eq!(b.remote_peer, pa);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.stream.write_all(&sent).await.unwrap();
            a.stream.write_all(b"x").await.unwrap();
            a.stream.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.stream.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), data.len() + 1);
        assert_eq!(&got[..data.len()], &data[..]);
    }

    #[tokio::test]
    async fn every_key_type_authenticates() {
        let rsa_hex = include_str!("../tests/data/rsa-private-vector.hex").trim();
        let rsa: Vec<u8> = (0..rsa_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&rsa_hex[i..i + 2], 16).unwrap())
            .collect();
        let keys = [
            Keypair::generate_ed25519(),
            Keypair::generate_secp256k1(),
            Keypair::generate_ecdsa(),
            Keypair::from_protobuf_encoding(&rsa).unwrap(),
        ];
        let responder = Keypair::generate_ed25519();
        let rc = Config::new(&responder).unwrap();
        for key in keys {
            let (a, b) = tokio::io::duplex(1 << 16);
            let ca = Config::new(&key).unwrap();
            let expected = Some(responder.public().to_peer_id());
            let (ra, rb) = tokio::join!(
                handshake(a, &ca, true, expected),
                handshake(b, &rc, false, None)
            );
            assert_eq!(
                rb.unwrap().remote_peer,
                key.public().to_peer_id(),
                "{:?}",
                key.key_type()
            );
            assert_eq!(ra.unwrap().remote_peer, responder.public().to_peer_id());
        }
    }

    #[tokio::test]
    async fn inlined_muxer_negotiation() {
        let y = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pick_muxer(
                &y(&["/yamux/1.0.0", "/mplex/6.7.0"]),
                &y(&["/mplex/6.7.0", "/yamux/1.0.0"])
            )
            .unwrap()
            .as_deref(),
            Some("/yamux/1.0.0")
        );
        assert_eq!(pick_muxer(&y(&[]), &y(&["/yamux/1.0.0"])).unwrap(), None);
        assert!(matches!(
            pick_muxer(&y(&["/a"]), &y(&["/b"])),
            Err(Error::NoCommonMuxer)
        ));
        for (mine, theirs, agreed) in [
            (
                y(&["/yamux/1.0.0"]),
                y(&["/mplex/6.7.0", "/yamux/1.0.0"]),
                Some("/yamux/1.0.0"),
            ),
            (y(&["/yamux/1.0.0"]), y(&[]), None),
        ] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let ca = Config::with_muxers(&Keypair::generate_ed25519(), mine).unwrap();
            let cb = Config::with_muxers(&Keypair::generate_ed25519(), theirs).unwrap();
            let (ra, rb) = tokio::join!(
                handshake(a, &ca, true, None),
                handshake(b, &cb, false, None)
            );
            assert_eq!(ra.unwrap().muxer.as_deref(), agreed);
            assert_eq!(rb.unwrap().muxer.as_deref(), agreed);
        }
    }

    #[tokio::test]
    async fn wrong_peer_is_refused() {
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let (a, _b, _, pb) = pair(Some(other)).await;
        match a {
            Err(Error::WrongPeer { expected, got }) => {
                assert_eq!(*expected, other);
                assert_eq!(*got, pb);
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("handshake with the wrong peer succeeded"),
        }
    }

    #[test]
    fn payload_checks() {
        let key = Keypair::generate_ed25519();
        let config = Config::new(&key).unwrap();
        // Our payload signs a different static key than this one.
        assert!(matches!(
            verify_payload(&config.payload, &[7u8; 32]),
            Err(Error::BadSignature)
        ));
        assert!(matches!(
            verify_payload(&[0xff, 0x01], &[7u8; 32]),
            Err(Error::BadPayload(_))
        ));
        assert!(matches!(
            verify_payload(&[], &[7u8; 32]),
            Err(Error::BadPayload(_))
        ));
    }

    #[tokio::test]
    async fn garbage_handshake_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let config = Config::new(&Keypair::generate_ed25519()).unwrap();
        a.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
        drop(a);
        assert!(handshake(b, &config, false, None).await.is_err());
    }
}
