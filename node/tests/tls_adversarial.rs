//! libp2p TLS under attack, over the wire, on TCP (/tls/1.0.0) and QUIC: clients with the
//! wrong ALPN, a certificate without the libp2p extension, a chain of several
//! certificates, an oversized certificate, and a handshake that stalls half-way. Each is
//! refused or timed out, counted, leaves no connection behind, and honest dials keep working
//! meanwhile. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pylon_node::metrics::DialErrorLabels;
use pylon_node::node::Node;
use pylon_node::protocols::ping;
use pylon_node::tls::Certificate;
use pylon_node::{multistream, Keypair, Multiaddr};
use pylon_testkit::node::{self as kit, port};
use pylon_testkit::wait;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

/// Accepts any server: these clients attack the server, they do not care who it is.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents a fixed chain unchecked (rustls would refuse to load the hostile ones).
#[derive(Debug)]
struct Present(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// What a hostile client presents.
enum Attack {
    /// A valid libp2p certificate but ALPN `h2` only.
    WrongAlpn,
    /// A certificate without the libp2p extension.
    NoExtension,
    /// The valid certificate twice: a chain of two.
    Chain,
    /// A certificate padded past the 16 KiB libp2p bound with a large SAN list.
    Oversized,
}

fn client_config(attack: &Attack) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let libp2p = Certificate::generate(&Keypair::generate_ed25519()).unwrap();
    let plain = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    };
    let (chain, key) = match attack {
        Attack::WrongAlpn => (vec![libp2p.cert.clone()], libp2p.key()),
        Attack::NoExtension => plain(vec!["x".into()]),
        Attack::Chain => (vec![libp2p.cert.clone(), libp2p.cert.clone()], libp2p.key()),
        Attack::Oversized => plain(
            (0..800)
                .map(|i| format!("host-{i:04}.example.org"))
                .collect(),
        ),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider.clone())))
        .with_client_cert_resolver(Arc::new(Present(Arc::new(
            rustls::sign::CertifiedKey::new(
                chain,
                provider.key_provider.load_private_key(key).unwrap(),
            ),
        ))));
    config.alpn_protocols = match attack {
        Attack::WrongAlpn => vec![b"h2".to_vec()],
        _ => vec![b"libp2p".to_vec()],
    };
    config
}

/// A node on `listen` whose handshakes time out after `handshake_timeout`.
async fn start(listen: &[&str], handshake_timeout: Duration) -> Node {
    let mut config = kit::config(listen);
    config.host.handshake_timeout = handshake_timeout;
    kit::start_with(config).await
}

fn addr(node: &Node, transport: &str) -> Multiaddr {
    node.host
        .listen_addrs()
        .into_iter()
        .find(|a| a.to_string().contains(transport))
        .unwrap()
        .with(multiaddr::Protocol::P2p(node.peer_id()))
}

/// Inbound handshake errors counted on `transport` for `error`, whatever their fault.
fn handshake_errors(node: &Node, transport: &'static str, error: &'static str) -> u64 {
    let faults = [
        "malformed",
        "protocol",
        "unsupported",
        "limit",
        "timeout",
        "io",
        "local",
    ];
    faults
        .into_iter()
        .map(|fault| {
            node.host
                .metrics()
                .handshake_errors
                .get_or_create(&DialErrorLabels {
                    transport,
                    error,
                    fault,
                    ip_version: "ip4",
                })
                .get()
        })
        .sum()
}

/// Waits until `n` handshake errors were counted on `transport` (a counter, no event:
/// polled).
async fn counted(node: &Node, transport: &'static str, n: u64) {
    wait::until("handshake errors counted", T, || {
        handshake_errors(node, transport, "handshake") >= n
    })
    .await;
}

/// An honest peer can still connect and ping.
async fn honest_dial_works(server: &Node, transport: &str) {
    let honest = start(&[], T).await;
    honest.host.dial(&addr(server, transport)).await.unwrap();
    ping::ping(&honest.host, &server.peer_id()).await.unwrap();
    honest.shutdown(T).await;
}

/// Negotiates /tls/1.0.0 on a fresh TCP connection, then runs the hostile handshake.
async fn tcp_attack(server: &Node, attack: &Attack) -> Result<(), std::io::Error> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port(&addr(server, "tcp"))))
        .await
        .unwrap();
    multistream::dialer_select(&mut tcp, &["/tls/1.0.0"])
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(attack)));
    let mut tls = connector
        .connect(ServerName::try_from("l").unwrap(), tcp)
        .await?;
    // TLS 1.3: the server checks the client's certificate after the client finished; its
    // verdict arrives as an alert on the next read.
    tls.write_all(&[0x13]).await?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn hostile_tls_clients_on_tcp_are_refused_and_counted() {
    let server = start(&["/ip4/127.0.0.1/tcp/0"], T).await;
    for attack in [
        Attack::WrongAlpn,
        Attack::NoExtension,
        Attack::Chain,
        Attack::Oversized,
    ] {
        let result = tokio::time::timeout(T, tcp_attack(&server, &attack))
            .await
            .unwrap();
        assert!(result.is_err(), "attack accepted");
    }
    // Every attempt ended as a counted handshake error, none as a connection.
    counted(&server, "tcp", 4).await;
    assert!(server.host.connections().is_empty());
    honest_dial_works(&server, "tcp").await;
    server.shutdown(T).await;
}

#[tokio::test]
async fn hostile_tls_clients_on_quic_are_refused() {
    let server = start(&["/ip4/127.0.0.1/udp/0/quic-v1"], T).await;
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port(&addr(&server, "quic"))).into();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    for attack in [
        Attack::WrongAlpn,
        Attack::NoExtension,
        Attack::Chain,
        Attack::Oversized,
    ] {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client_config(&attack)).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let result = tokio::time::timeout(T, async {
            let conn = endpoint.connect_with(config, target, "l").unwrap().await?;
            // Client certificates are checked after the client's Finished: the refusal
            // closes the connection right after.
            Err::<(), _>(conn.closed().await)
        })
        .await
        .unwrap();
        assert!(result.is_err());
    }
    counted(&server, "quic-v1", 4).await;
    assert!(server.host.connections().is_empty());
    honest_dial_works(&server, "quic").await;
    server.shutdown(T).await;
}

#[tokio::test]
async fn stalled_tls_handshakes_time_out_without_blocking_others() {
    let stall = Duration::from_millis(700);
    let server = start(
        &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"],
        stall,
    )
    .await;
    // Slowloris on TCP: /tls/1.0.0 agreed, then half a ClientHello, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port(&addr(&server, "tcp"))))
            .await
            .unwrap();
        multistream::dialer_select(&mut tcp, &["/tls/1.0.0"])
            .await
            .unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        stalled.push(tcp);
    }
    // Slowloris on QUIC: one Initial-looking datagram, then silence.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
    initial.extend_from_slice(&[7; 8]);
    initial.push(0);
    initial.resize(1200, 0);
    udp.send_to(&initial, ("127.0.0.1", port(&addr(&server, "quic"))))
        .await
        .unwrap();
    // Meanwhile honest peers connect on both transports.
    honest_dial_works(&server, "tcp").await;
    honest_dial_works(&server, "quic").await;
    // The stalled TLS handshakes hit the deadline: the server closes them and counts them.
    for mut tcp in stalled {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(T, tcp.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "stalled handshake still open");
    }
    assert_eq!(handshake_errors(&server, "tcp", "deadline"), 8);
    honest_dial_works(&server, "tcp").await;
    server.shutdown(T).await;
}
