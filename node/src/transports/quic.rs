//! QUIC v1 (`/quic-v1`) on quinn, secured by libp2p TLS (`specs/quic/`, `specs/tls/tls.md`):
//! the same self-signed certificate and verifiers as TLS on TCP, ALPN `libp2p`, and QUIC's
//! own bidirectional streams instead of yamux. One quinn endpoint per UDP socket serves
//! both directions, so dials leave from the listen port like TCP port reuse.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::identity::{PeerId, PublicKey};
use crate::tls;

/// Sent as a keep-alive so an idle connection outlives NAT bindings and the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A connection with nothing received for this long is gone (the smaller of both sides' wins).
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-stream and per-connection receive windows: the most a remote can make us buffer.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// rustls needs a server name even with SNI off; libp2p peers ignore it.
const SERVER_NAME: &str = "l";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tls configuration: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("peer presented no valid libp2p certificate: {0}")]
    Certificate(tls::Error),
    #[error("peer presented no certificate")]
    NoCertificate,
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Config(_) | Error::Connect(_) => Fault::Local,
            Error::Io(e) => Fault::of_io(e),
            Error::Connection(e) => e.fault(),
            Error::Certificate(e) => e.fault(),
            Error::NoCertificate => Fault::Protocol,
        }
    }
}

/// Streams a remote may have open at once on a new connection. quinn keeps state for every
/// stream it allows the remote to open (~80 bytes each), so a connection starts with a small
/// credit and the host raises it towards the configured limit as streams are used
/// ([`stream_limit`], `quinn::Connection::set_max_concurrent_bi_streams`).
pub const INITIAL_STREAMS: u32 = 16;

/// The most streams a remote may have open at once (`max_streams` clamped).
pub fn stream_limit(max_streams: usize) -> u32 {
    u32::try_from(max_streams.clamp(1, 4096)).unwrap_or(256)
}

/// Stream and window limits of every QUIC connection.
fn transport(max_streams: usize) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let streams = INITIAL_STREAMS.min(stream_limit(max_streams));
    t.max_concurrent_bidi_streams(streams.into());
    // libp2p uses bidirectional streams only.
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(None);
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(t)
}

/// The listener side: our certificate, client certificates required and checked.
pub fn server_config(
    cert: &tls::Certificate,
    max_streams: usize,
) -> Result<quinn::ServerConfig, Error> {
    let rustls = tls::server_config(cert).map_err(|e| Error::Config(e.to_string()))?;
    let crypto = QuicServerConfig::try_from(rustls).map_err(|e| Error::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(max_streams));
    Ok(config)
}

/// A dialer's configuration; `expected` is checked inside the handshake. The setup also
/// tells which peer answered when the check fails.
pub fn client_config(
    cert: &tls::Certificate,
    expected: Option<PeerId>,
    max_streams: usize,
) -> Result<(quinn::ClientConfig, tls::ClientSetup), Error> {
    let setup = tls::client_config(cert, expected).map_err(|e| Error::Config(e.to_string()))?;
    let crypto = QuicClientConfig::try_from(Arc::new(setup.config.clone()))
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(max_streams));
    Ok((config, setup))
}

/// Receive and send buffer asked for on every QUIC socket.
const UDP_BUFFER: usize = 4 << 20;

/// Binds a UDP socket and runs a quinn endpoint on it; with `server`, it accepts too.
/// IPv6 sockets are v6-only so `/ip4/0.0.0.0` and `/ip6/::` can share a port number.
pub fn bind(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, Error> {
    let domain = match addr {
        SocketAddr::V4(_) => socket2::Domain::IPV4,
        SocketAddr::V6(_) => socket2::Domain::IPV6,
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Bigger socket buffers than Linux's default (~208 KiB): at a few hundred MiB/s a
    // burst overflows the default receive buffer, the kernel drops datagrams and
    // congestion control backs off (go-libp2p asks operators for 7.5 MB for the same
    // reason). Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime for quinn"))?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        runtime,
    )?)
}

/// Dials `addr` from `endpoint`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, Error> {
    Ok(endpoint.connect_with(config, addr, SERVER_NAME)?.await?)
}

/// The verified identity key of the peer at the other end of an established connection.
pub fn peer_key(conn: &quinn::Connection) -> Result<PublicKey, Error> {
    let identity = conn.peer_identity().ok_or(Error::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| Error::NoCertificate)?;
    tls::peer_key(Some(&chain)).map_err(Error::Certificate)
}

/// The multiaddr of a QUIC socket address.
pub fn multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

/// One bidirectional QUIC stream as a byte stream.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl QuicStream {
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        QuicStream { send, recv }
    }

    /// Aborts both directions (RESET_STREAM and STOP_SENDING); dropping would finish the
    /// send side gracefully instead.
    pub fn reset(mut self) {
        let _ = self.send.reset(0u32.into());
        let _ = self.recv.stop(0u32.into());
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn setup() -> (Keypair, tls::Certificate) {
        let key = Keypair::generate_ed25519();
        let cert = tls::Certificate::generate(&key).unwrap();
        (key, cert)
    }

    #[tokio::test]
    async fn handshake_binds_peer_ids_and_streams_carry_bytes() {
        let (server_key, server_cert) = setup();
        let (client_key, client_cert) = setup();
        let server = bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(server_config(&server_cert, 8).unwrap()),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let client = bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut buf = Vec::new();
            recv.read_to_end(1 << 20).await.map(|b| buf = b).unwrap();
            send.write_all(&buf).await.unwrap();
            send.finish().unwrap();
            let key = peer_key(&conn).unwrap();
            conn.closed().await;
            key
        });
        let expected = server_key.public().to_peer_id();
        let (config, _) = client_config(&client_cert, Some(expected), 8).unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), connect(&client, config, addr))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer_key(&conn).unwrap().to_peer_id(), expected);
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut stream = QuicStream::new(send, recv);
        stream.write_all(&[7u8; 100_000]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, vec![7u8; 100_000]);
        conn.close(0u32.into(), b"");
        let seen = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.to_peer_id(), client_key.public().to_peer_id());
    }

    #[tokio::test]
    async fn wrong_peer_is_refused_inside_the_handshake() {
        let (server_key, server_cert) = setup();
        let (_, client_cert) = setup();
        let server = bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(server_config(&server_cert, 8).unwrap()),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let client = bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let (config, setup) = client_config(&client_cert, Some(other), 8).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), connect(&client, config, addr))
            .await
            .unwrap();
        assert!(result.is_err());
        assert_eq!(setup.seen_peer(), Some(server_key.public().to_peer_id()));
    }

    #[test]
    fn multiaddr_form() {
        assert_eq!(
            multiaddr("127.0.0.1:5".parse().unwrap()).to_string(),
            "/ip4/127.0.0.1/udp/5/quic-v1"
        );
        assert_eq!(
            multiaddr("[::1]:5".parse().unwrap()).to_string(),
            "/ip6/::1/udp/5/quic-v1"
        );
    }
}
