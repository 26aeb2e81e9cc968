//! Raw byte transports: TCP on tokio (IPv4 and IPv6, TCP_NODELAY) and an in-process
//! memory transport for tests. A transport only moves bytes; security and muxing are
//! layered on top by the host's upgrade pipeline.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use multiaddr::{Multiaddr, Protocol};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::identity::PeerId;
use crate::websocket::WsStream;

/// Buffer of each direction of a memory connection.
const MEMORY_BUFFER: usize = 256 * 1024;
/// Inbound memory connections queued on a listener before dials are refused.
const MEMORY_BACKLOG: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported multiaddr {0}")]
    Unsupported(Multiaddr),
    #[error("connection refused")]
    Refused,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] crate::websocket::Error),
    #[error("a /wss listener needs a certificate and key (websocket.tls_certificate, websocket.tls_key)")]
    NoCertificate,
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Unsupported(_) => Fault::Unsupported,
            Error::Refused => Fault::Io,
            Error::Io(e) => Fault::of_io(e),
            Error::WebSocket(e) => e.fault(),
            Error::NoCertificate | Error::ServerName(_) => Fault::Local,
        }
    }
}

/// Where a parsed multiaddr points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    /// `/udp/P/quic-v1`: handled by the host's quinn endpoints, not by [`dial`].
    Quic(SocketAddr),
    /// `/tcp/P/ws`, `/tcp/P/wss`, `/tcp/P/tls[/sni/NAME]/ws`.
    Ws(Box<WsTarget>),
    Memory(u64),
}

/// A WebSocket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    pub addr: SocketAddr,
    /// TLS under the WebSocket (`/wss`, `/tls/ws`).
    pub secure: bool,
    /// The name the server's certificate must carry (from `/sni/`); the IP otherwise.
    pub server_name: Option<String>,
    /// The HTTP path of the upgrade request.
    pub path: String,
}

impl WsTarget {
    /// The address's suffix after `/tcp/P`.
    fn suffix(&self) -> Multiaddr {
        let mut out = Multiaddr::empty();
        if self.secure {
            out.push(Protocol::Tls);
            if let Some(name) = &self.server_name {
                out.push(Protocol::Sni(name.clone().into()));
            }
        }
        out.push(Protocol::Ws(self.path.clone().into()));
        out
    }
}

/// TLS of `/wss`: what a listener presents and which roots a dialer trusts.
#[derive(Clone)]
pub struct WsTls {
    pub server: Option<Arc<rustls::ServerConfig>>,
    pub client: Arc<rustls::ClientConfig>,
}

impl WsTls {
    /// Dials trust the Mozilla root set (webpki-roots) plus `extra_roots`.
    pub fn new(
        server: Option<Arc<rustls::ServerConfig>>,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, rustls::Error> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for root in extra_roots {
            roots.add(root.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(WsTls {
            server,
            client: Arc::new(client),
        })
    }

    /// A `/wss` listener's configuration from a PEM certificate chain and private key.
    pub fn server_config(
        chain_pem: &std::path::Path,
        key_pem: &std::path::Path,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(chain_pem)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", chain_pem.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate", chain_pem.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key_pem)
            .map_err(|e| format!("{}: {e}", key_pem.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", chain_pem.display()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Target {
    pub fn transport_label(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Quic(_) => "quic-v1",
            Target::Ws(w) if w.secure => "wss",
            Target::Ws(_) => "ws",
            Target::Memory(_) => "memory",
        }
    }
    pub fn ip_version(&self) -> &'static str {
        match self {
            Target::Tcp(a) | Target::Quic(a) if a.is_ipv4() => "ip4",
            Target::Ws(w) if w.addr.is_ipv4() => "ip4",
            Target::Tcp(_) | Target::Quic(_) | Target::Ws(_) => "ip6",
            Target::Memory(_) => "",
        }
    }
}

/// Splits `/ip4/../tcp/..[/p2p/ID]` or `/memory/N[/p2p/ID]` into a target and optional PeerId.
pub fn parse(addr: &Multiaddr) -> Result<(Target, Option<PeerId>), Error> {
    let mut iter = addr.iter();
    let ip = |p: Option<Protocol>| match p {
        Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    let first = iter.next();
    let target = match (ip(first.clone()), first, iter.next()) {
        (Some(ip), _, Some(Protocol::Tcp(port))) => Target::Tcp(SocketAddr::new(ip, port)),
        (Some(ip), _, Some(Protocol::Udp(port))) => match iter.next() {
            Some(Protocol::QuicV1) => Target::Quic(SocketAddr::new(ip, port)),
            _ => return Err(Error::Unsupported(addr.clone())),
        },
        (None, Some(Protocol::Memory(port)), next) => {
            let peer = match next {
                None => None,
                Some(Protocol::P2p(peer)) if iter.next().is_none() => Some(peer),
                _ => return Err(Error::Unsupported(addr.clone())),
            };
            return Ok((Target::Memory(port), peer));
        }
        _ => return Err(Error::Unsupported(addr.clone())),
    };
    let mut next = iter.next();
    let target = match (target, &next) {
        (Target::Tcp(sock), Some(Protocol::Ws(_) | Protocol::Wss(_) | Protocol::Tls)) => {
            let mut ws = WsTarget {
                addr: sock,
                secure: false,
                server_name: None,
                path: String::new(),
            };
            if let Some(Protocol::Tls) = next {
                ws.secure = true;
                next = iter.next();
                if let Some(Protocol::Sni(name)) = next {
                    ws.server_name = Some(name.into_owned());
                    next = iter.next();
                }
            }
            match next {
                Some(Protocol::Ws(path)) => ws.path = path.into_owned(),
                Some(Protocol::Wss(path)) if !ws.secure => {
                    ws.secure = true;
                    ws.path = path.into_owned();
                }
                _ => return Err(Error::Unsupported(addr.clone())),
            }
            next = iter.next();
            Target::Ws(Box::new(ws))
        }
        (target, _) => target,
    };
    match (next, iter.next()) {
        (None, _) => Ok((target, None)),
        (Some(Protocol::P2p(peer)), None) => Ok((target, Some(peer))),
        _ => Err(Error::Unsupported(addr.clone())),
    }
}

/// The multiaddr of a WebSocket endpoint.
pub fn ws_multiaddr(tcp: SocketAddr, ws: &WsTarget) -> Multiaddr {
    let mut out = tcp_multiaddr(tcp);
    for p in ws.suffix().iter() {
        out.push(p);
    }
    out
}

/// The multiaddr of a socket address.
pub fn tcp_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

/// Per-socket options: no Nagle delay, and TCP keepalive so a peer that vanished without a
/// FIN is noticed and its connection slot freed.
fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(15));
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// A TCP connection to `addr` from `local`: a listen address (its IP, or the unspecified
/// one for a listener on every interface, and its port).
async fn connect_from(addr: SocketAddr, local: SocketAddr) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    socket.connect(addr).await
}

/// A connected byte stream of any transport.
pub enum RawStream {
    Tcp(TcpStream),
    Memory(DuplexStream),
    Ws(Box<WsStream<TcpStream>>),
    Wss(Box<WsStream<tokio_rustls::TlsStream<TcpStream>>>),
    /// The byte stream of a transport added to the host (`host::Transport`).
    Other(Box<dyn Io>),
}

/// What a byte stream of an added transport must be.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl RawStream {
    /// Wraps the byte stream of an added transport.
    pub fn other(io: impl Io) -> Self {
        RawStream::Other(Box::new(io))
    }
}

/// Runs `$body` with `$s` bound to the inner stream of any [`RawStream`] variant.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            RawStream::Tcp($s) => $body,
            RawStream::Memory($s) => $body,
            RawStream::Ws($s) => $body,
            RawStream::Wss($s) => $body,
            RawStream::Other($s) => $body,
        }
    };
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

type MemoryInbound = (DuplexStream, u64);

static MEMORY: LazyLock<Mutex<HashMap<u64, mpsc::Sender<MemoryInbound>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn memory_table() -> std::sync::MutexGuard<'static, HashMap<u64, mpsc::Sender<MemoryInbound>>> {
    // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// An accepted connection. WebSocket ones still need their TLS and HTTP upgrade, which
/// the host runs under its handshake deadline, not in the accept loop.
pub enum Inbound {
    Ready(RawStream),
    Ws {
        tcp: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
}

impl Inbound {
    /// Finishes what the transport has left to do (WebSocket TLS and upgrade).
    pub async fn upgrade(self) -> Result<RawStream, Error> {
        match self {
            Inbound::Ready(s) => Ok(s),
            Inbound::Ws { tcp, tls: None } => Ok(RawStream::Ws(Box::new(
                crate::websocket::server(tcp).await?,
            ))),
            Inbound::Ws {
                tcp,
                tls: Some(acceptor),
            } => {
                let tls = acceptor.accept(tcp).await?;
                let ws = crate::websocket::server(tokio_rustls::TlsStream::Server(tls)).await?;
                Ok(RawStream::Wss(Box::new(ws)))
            }
        }
    }
}

/// A bound listener of any transport.
pub enum Listener {
    Tcp(TcpListener),
    Ws {
        tcp: TcpListener,
        ws: WsTarget,
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
    Memory {
        port: u64,
        rx: mpsc::Receiver<MemoryInbound>,
    },
}

impl Listener {
    /// Binds the listen address (port 0 picks a free port).
    pub async fn bind(target: &Target, ws_tls: &WsTls) -> Result<Self, Error> {
        match target {
            Target::Quic(a) => Err(Error::Unsupported(crate::quic::multiaddr(*a))),
            Target::Tcp(addr) => Ok(Listener::Tcp(bind_tcp(*addr)?)),
            Target::Ws(ws) => {
                let tls = if ws.secure {
                    let config = ws_tls.server.clone().ok_or(Error::NoCertificate)?;
                    Some(tokio_rustls::TlsAcceptor::from(config))
                } else {
                    None
                };
                Ok(Listener::Ws {
                    tcp: bind_tcp(ws.addr)?,
                    ws: (**ws).clone(),
                    tls,
                })
            }

            Target::Memory(port) => {
                let (tx, rx) = mpsc::channel(MEMORY_BACKLOG);
                let mut table = memory_table();
                let port = if *port == 0 {
                    loop {
                        let p = rand::random::<u64>() >> 1;
                        if p != 0 && !table.contains_key(&p) {
                            break p;
                        }
                    }
                } else if table.contains_key(port) {
                    return Err(io::Error::from(io::ErrorKind::AddrInUse).into());
                } else {
                    *port
                };
                table.insert(port, tx);
                Ok(Listener::Memory { port, rx })
            }
        }
    }

    pub fn local_addr(&self) -> Result<Multiaddr, Error> {
        match self {
            Listener::Tcp(l) => Ok(tcp_multiaddr(l.local_addr()?)),
            Listener::Ws { tcp, ws, .. } => Ok(ws_multiaddr(tcp.local_addr()?, ws)),
            Listener::Memory { port, .. } => Ok(Multiaddr::empty().with(Protocol::Memory(*port))),
        }
    }

    /// Waits for the next inbound connection: the stream and the remote's address.
    pub async fn accept(&mut self) -> Result<(Inbound, Multiaddr), Error> {
        match self {
            Listener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                tune(&stream)?;
                Ok((
                    Inbound::Ready(RawStream::Tcp(stream)),
                    tcp_multiaddr(remote),
                ))
            }
            Listener::Ws { tcp, ws, tls } => {
                let (stream, remote) = tcp.accept().await?;
                tune(&stream)?;
                let remote = ws_multiaddr(
                    remote,
                    &WsTarget {
                        server_name: None,
                        ..ws.clone()
                    },
                );
                let inbound = Inbound::Ws {
                    tcp: stream,
                    tls: tls.clone(),
                };
                Ok((inbound, remote))
            }
            Listener::Memory { rx, .. } => match rx.recv().await {
                Some((stream, from)) => Ok((
                    Inbound::Ready(RawStream::Memory(stream)),
                    Multiaddr::empty().with(Protocol::Memory(from)),
                )),
                None => Err(Error::Refused),
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Memory { port, .. } = self {
            memory_table().remove(port);
        }
    }
}

/// A listening TCP socket (SO_REUSEADDR and SO_REUSEPORT, v6-only for IPv6) that owns its
/// port: the bind fails when another socket already listens there.
///
/// Linux lets sockets that all set SO_REUSEPORT (same user) bind one port and splits
/// inbound connections between their listeners, so a second Pylon started by mistake on
/// the same port would silently take half the inbound connections. A probe socket bound
/// first without SO_REUSEPORT conflicts with any listener already there (SO_REUSEADDR
/// still lets it pass the TIME_WAIT sockets of a previous run); only then is the listener
/// bound, with SO_REUSEPORT set before its bind as port reuse needs (our dials bind the
/// listen port too: setting the flag after the bind made some of those binds fall back to
/// an ephemeral port). Two processes starting in the same instant could still both pass
/// the probe.
fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, Error> {
    let new_socket = || -> io::Result<tokio::net::TcpSocket> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => {
                let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
                // So `/ip4/0.0.0.0/tcp/P` and `/ip6/::/tcp/P` can both be bound.
                s.set_only_v6(true)?;
                s.set_nonblocking(true)?;
                tokio::net::TcpSocket::from_std_stream(s.into())
            }
        };
        socket.set_reuseaddr(true)?;
        Ok(socket)
    };
    if addr.port() != 0 {
        let probe = new_socket()?;
        probe.bind(addr).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is already in use: something else listens on it (another Pylon?)"),
            ),
            _ => e,
        })?;
    }
    let socket = new_socket()?;
    // Outgoing dials bind the same port (port reuse), which NAT hole punching needs.
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

/// Dials a WebSocket: TCP, TLS for `/wss` (server certificate checked against the SNI name
/// or the IP), then the HTTP upgrade.
async fn dial_ws(ws: &WsTarget, ws_tls: &WsTls) -> Result<(RawStream, Multiaddr), Error> {
    let tcp = TcpStream::connect(ws.addr)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => Error::Refused,
            _ => Error::Io(e),
        })?;
    tune(&tcp)?;
    let local = ws_multiaddr(tcp.local_addr()?, ws);
    let host = match (&ws.server_name, ws.addr) {
        (Some(name), addr) if addr.port() == 443 && ws.secure => name.clone(),
        (Some(name), addr) => format!("{name}:{}", addr.port()),
        (None, addr) => addr.to_string(),
    };
    if !ws.secure {
        let stream = crate::websocket::client(tcp, &host, &ws.path).await?;
        return Ok((RawStream::Ws(Box::new(stream)), local));
    }
    let name = match &ws.server_name {
        Some(name) => rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|_| Error::ServerName(name.clone()))?,
        None => rustls::pki_types::ServerName::IpAddress(ws.addr.ip().into()),
    };
    let tls = tokio_rustls::TlsConnector::from(ws_tls.client.clone())
        .connect(name, tcp)
        .await?;
    let stream =
        crate::websocket::client(tokio_rustls::TlsStream::Client(tls), &host, &ws.path).await?;
    Ok((RawStream::Wss(Box::new(stream)), local))
}

/// A TCP connection to `addr` from `local` (a listen address) only — no fallback to
/// another port: the second half of a TCP simultaneous open, which is useless from any
/// other port.
pub async fn dial_tcp_from(
    addr: SocketAddr,
    local: SocketAddr,
) -> Result<(RawStream, Multiaddr), Error> {
    let stream = connect_from(addr, local)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => Error::Refused,
            _ => Error::Io(e),
        })?;
    tune(&stream)?;
    let local = tcp_multiaddr(stream.local_addr()?);
    Ok((RawStream::Tcp(stream), local))
}

/// Opens a raw connection; returns the stream and our local address on it.
/// With `reuse`, a TCP dial leaves from that local address (a listen address: its IP,
/// unless it listens on every interface, and its port) so the remote sees the address we
/// listen on; if the kernel refuses (the same 4-tuple is in use, say), it falls back to
/// an ephemeral port.
pub async fn dial(
    target: &Target,
    reuse: Option<SocketAddr>,
    ws_tls: &WsTls,
) -> Result<(RawStream, Multiaddr), Error> {
    match target {
        Target::Quic(a) => Err(Error::Unsupported(crate::quic::multiaddr(*a))),
        Target::Ws(ws) => dial_ws(ws, ws_tls).await,
        Target::Tcp(addr) => {
            let refused = |e: io::Error| match e.kind() {
                io::ErrorKind::ConnectionRefused => Error::Refused,
                _ => Error::Io(e),
            };
            let reused = match reuse {
                Some(local) => match connect_from(*addr, local).await {
                    Ok(s) => Some(s),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(Error::Refused)
                    }
                    Err(e) => {
                        // Rare, unexplained on loopback under load (a test that needs the
                        // listen port as the observed address then flakes): say why.
                        tracing::debug!(%addr, %local, "port reuse failed, dialing from an ephemeral port: {e}");
                        None
                    }
                },
                None => None,
            };
            let stream = match reused {
                Some(s) => s,
                None => TcpStream::connect(addr).await.map_err(refused)?,
            };
            tune(&stream)?;
            let local = tcp_multiaddr(stream.local_addr()?);
            Ok((RawStream::Tcp(stream), local))
        }
        Target::Memory(port) => {
            let tx = memory_table().get(port).cloned().ok_or(Error::Refused)?;
            let (ours, theirs) = tokio::io::duplex(MEMORY_BUFFER);
            let from = rand::random::<u64>() >> 1;
            tx.try_send((theirs, from)).map_err(|_| Error::Refused)?;
            Ok((
                RawStream::Memory(ours),
                Multiaddr::empty().with(Protocol::Memory(from)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_addresses() {
        let peer = crate::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        assert_eq!(
            parse(&a).unwrap(),
            (Target::Tcp("127.0.0.1:4001".parse().unwrap()), Some(peer))
        );
        let a: Multiaddr = "/ip6/::1/tcp/5".parse().unwrap();
        assert_eq!(
            parse(&a).unwrap().0,
            Target::Tcp("[::1]:5".parse().unwrap())
        );
        let a: Multiaddr = "/memory/9".parse().unwrap();
        assert_eq!(parse(&a).unwrap().0, Target::Memory(9));
        let a: Multiaddr = "/ip4/1.2.3.4/udp/5/quic-v1".parse().unwrap();
        assert_eq!(
            parse(&a).unwrap().0,
            Target::Quic("1.2.3.4:5".parse().unwrap())
        );
        let ws = |s: &str| match parse(&s.parse().unwrap()).unwrap().0 {
            Target::Ws(w) => *w,
            other => panic!("{other:?}"),
        };
        let plain = ws(&format!("/ip4/1.2.3.4/tcp/80/ws/p2p/{peer}"));
        assert_eq!((plain.secure, plain.path.as_str()), (false, "/"));
        assert!(ws("/ip6/::1/tcp/443/wss").secure);
        let sni = ws("/ip4/1.2.3.4/tcp/443/tls/sni/example.com/ws");
        assert!(sni.secure);
        assert_eq!(sni.server_name.as_deref(), Some("example.com"));
        assert_eq!(
            ws_multiaddr("1.2.3.4:443".parse().unwrap(), &sni).to_string(),
            "/ip4/1.2.3.4/tcp/443/tls/sni/example.com/ws"
        );
        for bad in [
            "/ip4/1.2.3.4/udp/5",
            "/ip4/1.2.3.4/udp/5/quic",
            "/ip4/1.2.3.4",
            "/dns4/x/tcp/1",
            "/ip4/1.2.3.4/tcp/1/tls",
            "/ip4/1.2.3.4/tcp/1/tls/wss",
            "/ip4/1.2.3.4/tcp/1/ws/ws",
            "/ip4/1.2.3.4/tcp/1/ws/tcp/2",
        ] {
            assert!(parse(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn memory_dial_and_refusal() {
        let tls = WsTls::new(None, &[]).unwrap();
        let mut l = Listener::bind(&Target::Memory(0), &tls).await.unwrap();
        let Target::Memory(port) = parse(&l.local_addr().unwrap()).unwrap().0 else {
            panic!()
        };
        let (_s, _) = dial(&Target::Memory(port), None, &tls).await.unwrap();
        l.accept().await.unwrap();
        drop(l);
        assert!(matches!(
            dial(&Target::Memory(port), None, &tls).await,
            Err(Error::Refused)
        ));
    }
}
