//! Raw byte transports: TCP on tokio (IPv4 and IPv6, TCP_NODELAY) and an in-process
//! memory transport for tests. A transport only moves bytes; security and muxing are
//! layered on top by the host's upgrade pipeline.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};

use multiaddr::{Multiaddr, Protocol};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::identity::PeerId;

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
}

/// Where a parsed multiaddr points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    /// `/udp/P/quic-v1`: handled by the host's quinn endpoints, not by [`dial`].
    Quic(SocketAddr),
    Memory(u64),
}

impl Target {
    pub fn transport_label(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Quic(_) => "quic-v1",
            Target::Memory(_) => "memory",
        }
    }
    pub fn ip_version(&self) -> &'static str {
        match self {
            Target::Tcp(a) | Target::Quic(a) if a.is_ipv4() => "ip4",
            Target::Tcp(_) | Target::Quic(_) => "ip6",
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
    match (iter.next(), iter.next()) {
        (None, _) => Ok((target, None)),
        (Some(Protocol::P2p(peer)), None) => Ok((target, Some(peer))),
        _ => Err(Error::Unsupported(addr.clone())),
    }
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

async fn connect_from(addr: SocketAddr, port: u16) -> io::Result<TcpStream> {
    let (socket, local) = match addr {
        SocketAddr::V4(_) => (
            tokio::net::TcpSocket::new_v4()?,
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
        ),
        SocketAddr::V6(_) => (
            tokio::net::TcpSocket::new_v6()?,
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port),
        ),
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
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RawStream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            RawStream::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            RawStream::Tcp(s) => s.is_write_vectored(),
            RawStream::Memory(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawStream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

type MemoryInbound = (DuplexStream, u64);

static MEMORY: LazyLock<Mutex<HashMap<u64, mpsc::Sender<MemoryInbound>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn memory_table() -> std::sync::MutexGuard<'static, HashMap<u64, mpsc::Sender<MemoryInbound>>> {
    // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bound listener of any transport.
pub enum Listener {
    Tcp(TcpListener),
    Memory {
        port: u64,
        rx: mpsc::Receiver<MemoryInbound>,
    },
}

impl Listener {
    /// Binds the listen address (port 0 picks a free port).
    pub async fn bind(target: &Target) -> Result<Self, Error> {
        match target {
            Target::Quic(a) => Err(Error::Unsupported(crate::quic::multiaddr(*a))),
            Target::Tcp(addr) => {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => {
                        let s = socket2::Socket::new(
                            socket2::Domain::IPV6,
                            socket2::Type::STREAM,
                            None,
                        )?;
                        // So `/ip4/0.0.0.0/tcp/P` and `/ip6/::/tcp/P` can both be bound.
                        s.set_only_v6(true)?;
                        s.set_nonblocking(true)?;
                        tokio::net::TcpSocket::from_std_stream(s.into())
                    }
                };
                socket.set_reuseaddr(true)?;
                // Outgoing dials bind the same port (port reuse), which NAT hole punching needs.
                socket.set_reuseport(true)?;
                socket.bind(*addr)?;
                Ok(Listener::Tcp(socket.listen(1024)?))
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
            Listener::Memory { port, .. } => Ok(Multiaddr::empty().with(Protocol::Memory(*port))),
        }
    }

    /// Waits for the next inbound connection: the stream and the remote's address.
    pub async fn accept(&mut self) -> Result<(RawStream, Multiaddr), Error> {
        match self {
            Listener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                tune(&stream)?;
                Ok((RawStream::Tcp(stream), tcp_multiaddr(remote)))
            }
            Listener::Memory { rx, .. } => match rx.recv().await {
                Some((stream, from)) => Ok((
                    RawStream::Memory(stream),
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

/// Opens a raw connection; returns the stream and our local address on it.
/// With `reuse_port`, a TCP dial leaves from that local port (the listen port) so the
/// remote sees the address we listen on; if the kernel refuses (the same 4-tuple is in
/// use, say), it falls back to an ephemeral port.
pub async fn dial(
    target: &Target,
    reuse_port: Option<u16>,
) -> Result<(RawStream, Multiaddr), Error> {
    match target {
        Target::Quic(a) => Err(Error::Unsupported(crate::quic::multiaddr(*a))),
        Target::Tcp(addr) => {
            let refused = |e: io::Error| match e.kind() {
                io::ErrorKind::ConnectionRefused => Error::Refused,
                _ => Error::Io(e),
            };
            let reused = match reuse_port {
                Some(port) => match connect_from(*addr, port).await {
                    Ok(s) => Some(s),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(Error::Refused)
                    }
                    Err(_) => None,
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
        for bad in [
            "/ip4/1.2.3.4/udp/5",
            "/ip4/1.2.3.4",
            "/dns4/x/tcp/1",
            "/ip4/1.2.3.4/tcp/1/ws",
        ] {
            assert!(parse(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn memory_dial_and_refusal() {
        let mut l = Listener::bind(&Target::Memory(0)).await.unwrap();
        let Target::Memory(port) = parse(&l.local_addr().unwrap()).unwrap().0 else {
            panic!()
        };
        let (_s, _) = dial(&Target::Memory(port), None).await.unwrap();
        l.accept().await.unwrap();
        drop(l);
        assert!(matches!(
            dial(&Target::Memory(port), None).await,
            Err(Error::Refused)
        ));
    }
}
