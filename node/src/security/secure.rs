//! The security step of the connection upgrade: choose `/noise` or `/tls/1.0.0` with
//! multistream-select and run that handshake. A dialer with a single preference proposes
//! it lazily (one round trip saved); with several, it negotiates in order. A listener
//! accepts both.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::fault::{Classify, Fault};
use crate::identity::{Keypair, PeerId, PublicKey};
use crate::multistream::{self, Negotiated};
use crate::{noise, tls};

/// A security protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Noise,
    Tls,
}

impl Security {
    pub fn protocol(self) -> &'static str {
        match self {
            Security::Noise => noise::PROTOCOL,
            Security::Tls => tls::PROTOCOL,
        }
    }
    /// The `security` label of go-libp2p's metrics.
    pub fn label(self) -> &'static str {
        match self {
            Security::Noise => "noise",
            Security::Tls => "tls",
        }
    }
    fn from_protocol(p: &str) -> Option<Self> {
        [Security::Noise, Security::Tls]
            .into_iter()
            .find(|s| s.protocol() == p)
    }
}

/// Why the security step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no security protocol in common")]
    NoCommonProtocol,
    #[error("security negotiation: {0}")]
    Negotiation(multistream::Error),
    #[error("connected to {got}, expected {expected}")]
    WrongPeer {
        expected: Box<PeerId>,
        got: Box<PeerId>,
    },
    #[error("noise handshake: {0}")]
    Noise(noise::Error),
    #[error("tls handshake: {0}")]
    Tls(TlsError),
    /// Our own keys or configuration could not be set up.
    #[error("security setup: {0}")]
    Setup(String),
}

/// How a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls failed (a bad record, an alert, a certificate our verifier refused) or the
    /// connection did.
    #[error("{0}")]
    Io(io::Error),
    /// The remote's certificate is not a valid libp2p certificate.
    #[error("{0}")]
    Certificate(tls::Error),
    #[error("no ALPN protocol agreed")]
    NoAlpn,
    #[error("ALPN protocol not UTF-8")]
    BadAlpn,
}

impl Classify for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::NoCommonProtocol => Fault::Unsupported,
            Error::Negotiation(e) => e.fault(),
            Error::WrongPeer { .. } => Fault::Protocol,
            Error::Noise(e) => e.fault(),
            Error::Tls(TlsError::Io(e)) => e.fault(),
            Error::Tls(TlsError::Certificate(e)) => e.fault(),
            Error::Tls(TlsError::NoAlpn | TlsError::BadAlpn) => Fault::Protocol,
            Error::Setup(_) => Fault::Local,
        }
    }
}

/// Keys and configurations for both handshakes, made once per host.
pub struct Config {
    noise: noise::Config,
    cert: tls::Certificate,
    server: Arc<rustls::ServerConfig>,
    /// What a dialer proposes, in order.
    dial_order: Vec<Security>,
    muxers: Vec<String>,
}

impl Config {
    /// `muxers` (preference order) are offered inside the handshakes; empty turns inlined
    /// muxer negotiation off.
    pub fn new(
        identity: &Keypair,
        dial_order: Vec<Security>,
        muxers: Vec<String>,
    ) -> Result<Self, Error> {
        let noise = noise::Config::with_muxers(identity, muxers.clone())
            .map_err(|e| Error::Setup(format!("noise: {e}")))?;
        let cert = tls::Certificate::generate(identity)
            .map_err(|e| Error::Setup(format!("tls certificate: {e}")))?;
        let mut server =
            tls::server_config(&cert).map_err(|e| Error::Setup(format!("tls server: {e}")))?;
        server.alpn_protocols = tls::alpn_list(&muxers);
        let dial_order = if dial_order.is_empty() {
            vec![Security::Noise]
        } else {
            dial_order
        };
        Ok(Config {
            noise,
            cert,
            server: Arc::new(server),
            dial_order,
            muxers,
        })
    }

    /// Our libp2p TLS certificate (also QUIC's).
    pub fn certificate(&self) -> &tls::Certificate {
        &self.cert
    }
}

/// A secured byte stream. Noise, the common case, stays inline (no extra indirection on
/// every read and write); the rarer TLS stream is boxed.
#[allow(clippy::large_enum_variant)]
pub enum Secured<T> {
    Noise(noise::Stream<T>),
    Tls(Box<tokio_rustls::TlsStream<T>>),
}

/// The result of the security step.
pub struct Output<T> {
    pub stream: Secured<T>,
    pub remote_peer: PeerId,
    pub remote_key: PublicKey,
    pub security: Security,
    /// The muxer agreed inside the handshake (Noise extensions or TLS ALPN); `None` means
    /// it still has to be negotiated with multistream-select.
    pub muxer: Option<String>,
}

/// Dialer side.
pub async fn outbound<T>(
    mut io: T,
    config: &Config,
    expected: Option<PeerId>,
) -> Result<Output<Negotiated<T>>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (io, security) = if let [only] = config.dial_order.as_slice() {
        (Negotiated::lazy(io, only.protocol()), *only)
    } else {
        let protocols: Vec<&str> = config.dial_order.iter().map(|s| s.protocol()).collect();
        let chosen = multistream::dialer_select(&mut io, &protocols)
            .await
            .map_err(negotiation)?;
        let security = Security::from_protocol(&chosen).ok_or(Error::NoCommonProtocol)?;
        (Negotiated::done(io), security)
    };
    match security {
        Security::Noise => noise_handshake(io, config, true, expected).await,
        Security::Tls => {
            let mut setup = tls::client_config(&config.cert, expected)
                .map_err(|e| Error::Setup(format!("tls client: {e}")))?;
            setup.config.alpn_protocols = tls::alpn_list(&config.muxers);
            let seen = |setup: &tls::ClientSetup| setup.seen_peer();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(setup.config.clone()));
            // SNI is off; rustls still wants a name to hand to the verifier.
            let name = rustls::pki_types::ServerName::try_from("libp2p")
                .map_err(|e| Error::Setup(format!("tls server name: {e}")))?;
            match connector.connect(name, io).await {
                Ok(stream) => finish_tls(tokio_rustls::TlsStream::Client(stream), expected),
                Err(e) => match (expected, seen(&setup)) {
                    (Some(expected), Some(got)) if got != expected => Err(Error::WrongPeer {
                        expected: Box::new(expected),
                        got: Box::new(got),
                    }),
                    _ if multistream_refused(&e) => Err(Error::NoCommonProtocol),
                    _ => Err(Error::Tls(TlsError::Io(e))),
                },
            }
        }
    }
}

/// Listener side.
pub async fn inbound<T>(mut io: T, config: &Config) -> Result<Output<Negotiated<T>>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let chosen = multistream::listener_select(&mut io, |p| Security::from_protocol(p).is_some())
        .await
        .map_err(negotiation)?;
    let io = Negotiated::done(io);
    match Security::from_protocol(&chosen) {
        Some(Security::Noise) => noise_handshake(io, config, false, None).await,
        Some(Security::Tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.server.clone());
            let stream = acceptor
                .accept(io)
                .await
                .map_err(|e| Error::Tls(TlsError::Io(e)))?;
            finish_tls(tokio_rustls::TlsStream::Server(stream), None)
        }
        None => Err(Error::NoCommonProtocol),
    }
}

fn negotiation(e: multistream::Error) -> Error {
    match e {
        multistream::Error::NoCommonProtocol | multistream::Error::TooManyProposals => {
            Error::NoCommonProtocol
        }
        other => Error::Negotiation(other),
    }
}

fn multistream_refused(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<multistream::NotSupported>())
}

async fn noise_handshake<T>(
    io: T,
    config: &Config,
    dialer: bool,
    expected: Option<PeerId>,
) -> Result<Output<T>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match noise::handshake(io, &config.noise, dialer, expected).await {
        Ok(out) => Ok(Output {
            stream: Secured::Noise(out.stream),
            remote_peer: out.remote_peer,
            remote_key: out.remote_key,
            security: Security::Noise,
            muxer: out.muxer,
        }),
        Err(noise::Error::WrongPeer { expected, got }) => Err(Error::WrongPeer { expected, got }),
        Err(noise::Error::Io(e)) if multistream_refused(&e) => Err(Error::NoCommonProtocol),
        Err(e) => Err(Error::Noise(e)),
    }
}

fn finish_tls<T>(
    stream: tokio_rustls::TlsStream<T>,
    expected: Option<PeerId>,
) -> Result<Output<T>, Error> {
    let (_, session) = stream.get_ref();
    //= specs/connections/inlined-muxer-negotiation.md#multiplexer-negotiation-over-tls
    //# If `"libp2p"` is the result of the ALPN process, nodes MUST use protocol
    //# negotiation of the stream multiplexer
    let muxer = match session.alpn_protocol() {
        Some(tls::ALPN) => None,
        Some(other) => {
            Some(String::from_utf8(other.to_vec()).map_err(|_| Error::Tls(TlsError::BadAlpn))?)
        }
        None => return Err(Error::Tls(TlsError::NoAlpn)),
    };
    let key = tls::peer_key(session.peer_certificates())
        .map_err(|e| Error::Tls(TlsError::Certificate(e)))?;
    let peer = key.to_peer_id();
    if let Some(expected) = expected {
        if expected != peer {
            return Err(Error::WrongPeer {
                expected: Box::new(expected),
                got: Box::new(peer),
            });
        }
    }
    Ok(Output {
        stream: Secured::Tls(Box::new(stream)),
        remote_peer: peer,
        remote_key: key,
        security: Security::Tls,
        muxer,
    })
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Secured<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Secured::Noise(s) => Pin::new(s).poll_read(cx, buf),
            Secured::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Secured<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Secured::Noise(s) => Pin::new(s).poll_write(cx, buf),
            Secured::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Secured::Noise(s) => Pin::new(s).poll_flush(cx),
            Secured::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Secured::Noise(s) => Pin::new(s).poll_shutdown(cx),
            Secured::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
