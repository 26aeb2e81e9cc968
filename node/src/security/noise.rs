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
use ring::aead;
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

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Io(e) => Fault::of_io(e),
            // A message that fails to decrypt or has the wrong length: the remote's bytes.
            Error::Noise(_) | Error::BadPayload(_) => Fault::Malformed,
            Error::BadSignature | Error::WrongPeer { .. } => Fault::Protocol,
            Error::NoCommonMuxer => Fault::Unsupported,
        }
    }
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
    if !state.is_handshake_finished() {
        return Err(Error::BadPayload("handshake did not finish".into()));
    }
    let keys = state.dangerously_get_raw_split();
    Ok(Output {
        stream: Stream::new(io, dialer, keys)?,
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
    if !crate::identity::verify_cached(&key, &key_bytes, &signed, &sig) {
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

/// One direction's cipher after the handshake (`specs/noise/README.md`, Noise `CipherState`):
/// ChaCha20-Poly1305 with the frame counter as nonce (32 zero bits, then the counter
/// little-endian) and no associated data.
struct Cipher {
    key: aead::LessSafeKey,
    nonce: u64,
}

impl Cipher {
    fn new(key: &[u8; 32]) -> io::Result<Self> {
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .map_err(|_| invalid("noise key rejected"))?;
        Ok(Cipher {
            key: aead::LessSafeKey::new(key),
            nonce: 0,
        })
    }

    fn next_nonce(&mut self) -> io::Result<aead::Nonce> {
        // Noise reserves 2^64-1; a connection would need 2^64 frames to get there.
        if self.nonce == u64::MAX {
            return Err(invalid("noise nonce exhausted"));
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.nonce.to_le_bytes());
        self.nonce += 1;
        Ok(aead::Nonce::assume_unique_for_key(n))
    }

    /// Encrypts `buf` in place and returns the tag to append.
    fn seal(&mut self, buf: &mut [u8]) -> io::Result<aead::Tag> {
        let nonce = self.next_nonce()?;
        self.key
            .seal_in_place_separate_tag(nonce, aead::Aad::empty(), buf)
            .map_err(|_| invalid("noise encryption failed"))
    }

    /// Decrypts ciphertext+tag in place; returns the plaintext length.
    fn open(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let nonce = self.next_nonce()?;
        self.key
            .open_in_place(nonce, aead::Aad::empty(), buf)
            .map(|plain| plain.len())
            .map_err(|_| invalid("noise decryption failed"))
    }
}

/// Read buffer large enough for two full frames, so one read can bring in more than one.
const READ_BUF_MAX: usize = 2 * (2 + MAX_FRAME_LEN);
/// A fresh connection starts with this much; identify and ping fit.
const READ_BUF_MIN: usize = 2048;

/// An encrypted byte stream after the handshake.
///
/// Reads fill one buffer with as many frames as the socket has, open each frame in place
/// and hand out its plaintext from there. Writes go into an open frame (length prefix,
/// plaintext) that is sealed in place when full or on flush and then swapped with the
/// frame being sent, so the next frame fills while the previous one is written. Buffers
/// grow on demand: an idle connection that only ever saw small frames keeps small ones.
pub struct Stream<T> {
    io: T,
    tx: Cipher,
    rx: Cipher,
    // Reading: rbuf[rpos..rend] is raw input not yet opened; rbuf[ppos..pend] is the
    // plaintext of the last frame opened, not yet read.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    ppos: usize,
    pend: usize,
    read_eof: bool,
    // Writing: `wopen` is [2-byte length][plaintext] being filled (empty when no frame is
    // open); `wout[wpos..]` is sealed bytes being written.
    wopen: Vec<u8>,
    wout: Vec<u8>,
    wpos: usize,
}

impl<T> Stream<T> {
    fn new(io: T, dialer: bool, keys: ([u8; 32], [u8; 32])) -> io::Result<Self> {
        // Split(): the first key encrypts initiator -> responder.
        let (send, recv) = if dialer {
            (keys.0, keys.1)
        } else {
            (keys.1, keys.0)
        };
        Ok(Stream {
            io,
            tx: Cipher::new(&send)?,
            rx: Cipher::new(&recv)?,
            rbuf: Vec::new(),
            rpos: 0,
            rend: 0,
            ppos: 0,
            pend: 0,
            read_eof: false,
            wopen: Vec::new(),
            wout: Vec::new(),
            wpos: 0,
        })
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream<T> {
    /// Plaintext bytes in the open frame.
    fn open_plain(&self) -> usize {
        self.wopen.len().saturating_sub(2)
    }

    /// Seals the open frame and makes it the one being sent (only when `wout` is drained).
    fn seal_open(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.wpos, self.wout.len());
        if self.wopen.is_empty() {
            return Ok(());
        }
        let tag = self.tx.seal(&mut self.wopen[2..])?;
        self.wopen.extend_from_slice(tag.as_ref());
        let len = (self.wopen.len() - 2) as u16;
        self.wopen[..2].copy_from_slice(&len.to_be_bytes());
        std::mem::swap(&mut self.wopen, &mut self.wout);
        self.wopen.clear();
        self.wpos = 0;
        Ok(())
    }

    /// Writes sealed bytes out until none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        crate::io_util::poll_write_from(&mut self.io, cx, &self.wout, &mut self.wpos)
    }

    /// Opens the next complete frame in `rbuf`, if there is one; otherwise returns how many
    /// raw bytes the next frame needs in all (length prefix included).
    fn open_next(&mut self) -> io::Result<Result<(), usize>> {
        let avail = self.rend - self.rpos;
        if avail < 2 {
            return Ok(Err(2));
        }
        let len = u16::from_be_bytes([self.rbuf[self.rpos], self.rbuf[self.rpos + 1]]) as usize;
        if avail < 2 + len {
            return Ok(Err(2 + len));
        }
        if len < TAG_LEN {
            return Err(invalid("noise frame shorter than its tag"));
        }
        let start = self.rpos + 2;
        let n = self.rx.open(&mut self.rbuf[start..start + len])?;
        self.ppos = start;
        self.pend = start + n;
        self.rpos = start + len;
        Ok(Ok(()))
    }

    /// Makes room for a frame of `need` raw bytes starting at `rpos`.
    fn reserve_frame(&mut self, need: usize) {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
        if self.rbuf.len() - self.rpos >= need {
            return;
        }
        // Move the partial frame to the front (at most one frame's worth of bytes).
        self.rbuf.copy_within(self.rpos..self.rend, 0);
        self.rend -= self.rpos;
        self.rpos = 0;
        if self.rbuf.len() < need {
            let size = if need > READ_BUF_MIN {
                READ_BUF_MAX
            } else {
                READ_BUF_MIN
            };
            self.rbuf.resize(size, 0);
        }
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
            if this.ppos < this.pend {
                let n = out.remaining().min(this.pend - this.ppos);
                out.put_slice(&this.rbuf[this.ppos..this.ppos + n]);
                this.ppos += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let need = match this.open_next()? {
                Ok(()) => continue,
                Err(need) => need,
            };
            this.reserve_frame(need);
            let mut rb = ReadBuf::new(&mut this.rbuf[this.rend..]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            if got == 0 {
                if this.rpos == this.rend {
                    this.read_eof = true;
                    continue;
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            this.rend += got;
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
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.open_plain() == MAX_PLAINTEXT {
            ready!(this.poll_drain(cx))?;
            this.seal_open()?;
        }
        if this.wopen.is_empty() {
            this.wopen
                .reserve(2 + buf.len().min(MAX_PLAINTEXT) + TAG_LEN);
            this.wopen.extend_from_slice(&[0, 0]);
        }
        let n = buf.len().min(MAX_PLAINTEXT - this.open_plain());
        this.wopen.extend_from_slice(&buf[..n]);
        if this.open_plain() == MAX_PLAINTEXT && this.wpos == this.wout.len() {
            this.seal_open()?;
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
        if !this.wopen.is_empty() {
            this.seal_open()?;
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
    async fn frames_of_every_size_survive_any_read_split() {
        // Writes of irregular sizes with flushes in between (frames from 1 byte to full),
        // read back in irregular pieces: frames straddle the read buffer in every way.
        let (a, b, _, _) = pair(None).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let sizes = [
            1usize, 17, 65519, 65520, 3, 200_000, 4096, 65518, 1, 131_038, 7,
        ];
        let total: usize = sizes.iter().sum();
        let data: Vec<u8> = (0..total as u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for (k, n) in sizes.iter().enumerate() {
                a.stream.write_all(&sent[at..at + n]).await.unwrap();
                if k % 2 == 0 {
                    a.stream.flush().await.unwrap();
                }
                at += n;
            }
            a.stream.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let mut piece = 1;
        loop {
            let mut buf = vec![0u8; piece];
            let n = b.stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            piece = piece * 7 % 70_001 + 1;
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "plaintext differs");
    }

    #[tokio::test]
    async fn tampered_or_truncated_frames_are_errors() {
        for attack in ["flip", "short", "cut"] {
            let (a, b) = tokio::io::duplex(1 << 20);
            let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let (ca, cb) = (Config::new(&ka).unwrap(), Config::new(&kb).unwrap());
            let (ra, rb) = tokio::join!(
                handshake(a, &ca, true, None),
                handshake(b, &cb, false, None)
            );
            let (mut a, mut b) = (ra.unwrap().stream, rb.unwrap().stream);
            // Write one sealed frame by hand onto the raw pipe.
            let mut frame = b"hello".to_vec();
            let tag = a.tx.seal(&mut frame).unwrap();
            frame.extend_from_slice(tag.as_ref());
            let mut raw = (frame.len() as u16).to_be_bytes().to_vec();
            raw.extend_from_slice(&frame);
            match attack {
                "flip" => raw[4] ^= 1,
                "short" => raw = vec![0, 3, 1, 2, 3],
                _ => raw.truncate(raw.len() - 1),
            }
            a.io.write_all(&raw).await.unwrap();
            a.io.shutdown().await.unwrap();
            let mut buf = [0u8; 16];
            let err = b.read(&mut buf).await.unwrap_err();
            let kind = if attack == "cut" {
                io::ErrorKind::UnexpectedEof
            } else {
                io::ErrorKind::InvalidData
            };
            assert_eq!(err.kind(), kind, "{attack}: {err}");
        }
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
        let rsa_hex = include_str!("../../tests/data/rsa-private-vector.hex").trim();
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
