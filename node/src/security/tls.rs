//! libp2p TLS (`specs/tls/tls.md`): the self-signed certificate that carries our identity,
//! its verification, and rustls configurations that use it (TLS 1.3 only, ALPN `libp2p`,
//! mutual authentication, no SNI).
//!
//! The certificate key is a fresh P-256 key, unrelated to the identity key; the identity
//! key signs `libp2p-tls-handshake:` + the certificate's SubjectPublicKeyInfo, and the
//! signature travels in the libp2p Public Key Extension (OID 1.3.6.1.4.1.53594.1.1).
//! Stock verifiers reject the critical extension, so both rustls verifiers are ours.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{decode_public_key, Keypair, PeerId, PublicKey};

pub const PROTOCOL: &str = "/tls/1.0.0";
//= specs/tls/tls.md#alpn
//# "libp2p" is used as the application protocol for ALPN.
pub const ALPN: &[u8] = b"libp2p";
//= specs/tls/tls.md#libp2p-public-key-extension
//# the Object Identier `1.3.6.1.4.1.53594.1.1`
pub const EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 53594, 1, 1];
const EXTENSION_OID_STR: &str = "1.3.6.1.4.1.53594.1.1";
const SIGNING_PREFIX: &[u8] = b"libp2p-tls-handshake:";
/// The ALPN list with inlined muxer negotiation: the muxers in preference order, then
/// `libp2p`, which must come last.
pub fn alpn_list(muxers: &[String]) -> Vec<Vec<u8>> {
    muxers
        .iter()
        .map(|m| m.as_bytes().to_vec())
        .chain(std::iter::once(ALPN.to_vec()))
        .collect()
}

/// Largest certificate we parse.
pub const MAX_CERT_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("certificate generation: {0}")]
    Generate(String),
    #[error("expected exactly one certificate, got {0}")]
    ChainLength(usize),
    #[error("certificate unparseable: {0}")]
    Parse(String),
    #[error("certificate not valid at this time")]
    Expired,
    #[error("certificate self-signature invalid")]
    BadSelfSignature,
    #[error("libp2p public key extension missing")]
    MissingExtension,
    #[error("unknown critical extension {0}")]
    UnknownCriticalExtension(String),
    #[error("libp2p public key extension malformed")]
    BadExtension,
    #[error("host key signature over the certificate key invalid")]
    BadHostSignature,
    #[error("certificate is for {got}, expected {expected}")]
    WrongPeer {
        expected: Box<PeerId>,
        got: Box<PeerId>,
    },
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Generate(_) => Fault::Local,
            Error::Parse(_) | Error::BadExtension => Fault::Malformed,
            Error::ChainLength(_)
            | Error::Expired
            | Error::BadSelfSignature
            | Error::MissingExtension
            | Error::UnknownCriticalExtension(_)
            | Error::BadHostSignature
            | Error::WrongPeer { .. } => Fault::Protocol,
        }
    }
}

/// Our certificate and its private key, made once per host.
pub struct Certificate {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The same, loaded for rustls once (loading a P-256 key derives its public point).
    certified: Arc<rustls::sign::CertifiedKey>,
}

impl Certificate {
    pub fn generate(identity: &Keypair) -> Result<Self, Error> {
        let gen = |e: rcgen::Error| Error::Generate(e.to_string());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
        let mut signed = SIGNING_PREFIX.to_vec();
        signed.extend_from_slice(&key.public_key_der());
        let signature = identity
            .sign(&signed)
            .map_err(|e| Error::Generate(e.to_string()))?;
        let mut ext = rcgen::CustomExtension::from_oid_content(
            EXTENSION_OID,
            der_sequence(&[
                &der_octets(&identity.public().encode_protobuf()),
                &der_octets(&signature),
            ]),
        );
        ext.set_criticality(true);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.custom_extensions.push(ext);
        // Valid from 1975 to 4096, as go-libp2p does: clocks of peers disagree.
        params.not_before = rcgen::date_time_ymd(1975, 1, 1);
        params.not_after = rcgen::date_time_ymd(4096, 1, 1);
        let cert = params.self_signed(&key).map_err(gen)?;
        let cert = cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        let signing = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.clone_key()))
            .map_err(|e| Error::Generate(e.to_string()))?;
        let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![cert.clone()], signing));
        Ok(Certificate {
            cert,
            key,
            certified,
        })
    }

    /// The certificate's private key (not the host key).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_octets(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    der_len(&mut out, data.len());
    out.extend_from_slice(data);
    out
}

fn der_sequence(parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Reads one DER element with the given tag; returns (content, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

/// Verifies a peer's certificate chain; returns its identity key.
pub fn verify_chain(chain: &[CertificateDer<'_>], now_unix: i64) -> Result<PublicKey, Error> {
    //= specs/tls/tls.md#peer-authentication
    //# Endpoints MUST abort the connection attempt if more than one certificate is received
    let [cert] = chain else {
        return Err(Error::ChainLength(chain.len()));
    };
    verify_certificate(cert.as_ref(), now_unix)
}

/// Verifies one libp2p certificate (DER); returns the identity key it carries.
pub fn verify_certificate(der: &[u8], now_unix: i64) -> Result<PublicKey, Error> {
    if der.len() > MAX_CERT_LEN {
        return Err(Error::Parse(format!("{} bytes", der.len())));
    }
    let digest = der_digest(der);
    if let Some((key, from, until)) = verified_cache().entries.get(&digest) {
        if (*from..=*until).contains(&now_unix) {
            return Ok(key.clone());
        }
        return Err(Error::Expired);
    }
    verify_uncached(der, now_unix, digest)
}

fn verify_uncached(der: &[u8], now_unix: i64, digest: [u8; 32]) -> Result<PublicKey, Error> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| Error::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Parse("trailing bytes".into()));
    }
    let now = x509_parser::time::ASN1Time::from_timestamp(now_unix)
        .map_err(|e| Error::Parse(e.to_string()))?;
    if !cert.validity().is_valid_at(now) {
        return Err(Error::Expired);
    }
    cert.verify_signature(None)
        .map_err(|_| Error::BadSelfSignature)?;
    let mut signed_key = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == EXTENSION_OID_STR {
            if signed_key.is_some() {
                return Err(Error::BadExtension);
            }
            signed_key = Some(ext.value);
        } else if ext.critical && !is_known(&ext.oid.to_id_string()) {
            return Err(Error::UnknownCriticalExtension(ext.oid.to_id_string()));
        }
    }
    let value = signed_key.ok_or(Error::MissingExtension)?;
    let (seq, rest) = der_take(value, 0x30).ok_or(Error::BadExtension)?;
    if !rest.is_empty() {
        return Err(Error::BadExtension);
    }
    let (public_key, seq) = der_take(seq, 0x04).ok_or(Error::BadExtension)?;
    let (signature, seq) = der_take(seq, 0x04).ok_or(Error::BadExtension)?;
    if !seq.is_empty() {
        return Err(Error::BadExtension);
    }
    let key = decode_public_key(public_key).map_err(|_| Error::BadExtension)?;
    let mut signed = SIGNING_PREFIX.to_vec();
    signed.extend_from_slice(cert.public_key().raw);
    if !key.verify(&signed, signature) {
        return Err(Error::BadHostSignature);
    }
    let validity = cert.validity();
    let mut cache = verified_cache();
    if cache.order.len() >= VERIFIED_CACHE_LEN {
        if let Some(old) = cache.order.pop_front() {
            cache.entries.remove(&old);
        }
    }
    let entry = (
        key.clone(),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if cache.entries.insert(digest, entry).is_none() {
        cache.order.push_back(digest);
    }
    Ok(key)
}

/// Critical extensions a libp2p certificate may carry that we understand.
fn is_known(oid: &str) -> bool {
    matches!(oid, "2.5.29.19" | "2.5.29.15" | "2.5.29.37" | "2.5.29.17")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// ring's provider, built once (every dial makes a client configuration).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Certificates verified recently, by SHA-256 of their DER, with the identity key they
/// carry and their validity. Verifying costs an ECDSA and an identity-signature check; the
/// same certificate is checked again right after each handshake (to name the peer) and on
/// every later connection from the same host. Bounded: the oldest entry goes first.
struct VerifiedCache {
    order: VecDeque<[u8; 32]>,
    entries: HashMap<[u8; 32], (PublicKey, i64, i64)>,
}

/// Most certificates [`VerifiedCache`] remembers.
const VERIFIED_CACHE_LEN: usize = 1024;

fn verified_cache() -> MutexGuard<'static, VerifiedCache> {
    static CACHE: OnceLock<Mutex<VerifiedCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            Mutex::new(VerifiedCache {
                order: VecDeque::new(),
                entries: HashMap::new(),
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn der_digest(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

/// Checks the peer's certificate (and, for a dialer, that it is the expected peer).
#[derive(Debug)]
struct Verifier {
    expected: Option<PeerId>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The peer the certificate named, kept so a refused dial can say who answered.
    seen: std::sync::Mutex<Option<PeerId>>,
}

impl Verifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                Error::ChainLength(intermediates.len() + 1).to_string(),
            ));
        }
        let key = verify_certificate(end_entity.as_ref(), now_unix())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.to_peer_id());
        if let Some(expected) = self.expected {
            let got = key.to_peer_id();
            if got != expected {
                return Err(rustls::Error::General(
                    Error::WrongPeer {
                        expected: Box::new(expected),
                        got: Box::new(got),
                    }
                    .to_string(),
                ));
            }
        }
        Ok(())
    }

    /// TLS 1.3 CertificateVerify, checked against the certificate's key directly (webpki's
    /// certificate parser would refuse the critical libp2p extension).
    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let spki = rustls::pki_types::SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Hands our certificate to rustls. rustls's `with_single_cert` would run webpki over it,
/// which refuses the critical libp2p extension; a resolver hands it over unchecked.
#[derive(Debug)]
struct Resolver(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A dialer's configuration, and what its verifier saw.
pub struct ClientSetup {
    pub config: rustls::ClientConfig,
    verifier: Arc<Verifier>,
}

impl ClientSetup {
    /// The PeerId the server's certificate carried, once verified that far.
    pub fn seen_peer(&self) -> Option<PeerId> {
        *self.verifier.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client (dialer) configuration; `expected` is checked inside the handshake, before
/// our own certificate (our identity) is sent.
pub fn client_config(cert: &Certificate, expected: Option<PeerId>) -> Result<ClientSetup, Error> {
    let provider = provider();
    let verifier = Arc::new(Verifier {
        expected,
        provider: provider.clone(),
        seen: Default::default(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Generate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_cert_resolver(Arc::new(Resolver(cert.certified.clone())));
    config.alpn_protocols = vec![ALPN.to_vec()];
    //= specs/tls/tls.md#future-extensibility
    //# clients that only support the version of the handshake defined in this document MUST NOT send any value in the Server Name Indication
    config.enable_sni = false;
    Ok(ClientSetup { config, verifier })
}

/// A server (listener) configuration requiring client certificates.
pub fn server_config(cert: &Certificate) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(Verifier {
        expected: None,
        provider: provider.clone(),
        seen: Default::default(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Generate(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(cert.certified.clone())));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The identity key of the peer at the other end of a finished handshake.
pub fn peer_key(certs: Option<&[CertificateDer<'_>]>) -> Result<PublicKey, Error> {
    verify_chain(certs.unwrap_or(&[]), now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn spec_vectors() {
        let spec = include_str!("../../tests/data/tls-vectors.txt");
        let mut lines = spec.lines().filter(|l| !l.trim().is_empty());
        for _ in 0..3 {
            let cert = hex(lines.next().unwrap());
            let peer = lines.next().unwrap().trim();
            let key = verify_certificate(&cert, NOW).unwrap();
            assert_eq!(key.to_peer_id().to_string(), peer);
        }
        let invalid = hex(lines.next().unwrap());
        assert_eq!(
            verify_certificate(&invalid, NOW),
            Err(Error::BadHostSignature)
        );
    }

    #[test]
    fn round_trip_every_key_type() {
        for identity in [
            Keypair::generate_ed25519(),
            Keypair::generate_secp256k1(),
            Keypair::generate_ecdsa(),
        ] {
            let cert = Certificate::generate(&identity).unwrap();
            let key = verify_certificate(cert.cert.as_ref(), NOW).unwrap();
            assert_eq!(key.to_peer_id(), identity.public().to_peer_id());
            assert_eq!(
                verify_chain(&[cert.cert.clone(), cert.cert.clone()], NOW),
                Err(Error::ChainLength(2))
            );
        }
    }

    #[test]
    fn malformed_certificates_are_errors() {
        let identity = Keypair::generate_ed25519();
        let cert = Certificate::generate(&identity).unwrap();
        let der = cert.cert.as_ref().to_vec();
        assert!(verify_certificate(&[], NOW).is_err());
        assert!(verify_certificate(&der[..der.len() / 2], NOW).is_err());
        assert!(verify_certificate(&vec![0x30; MAX_CERT_LEN + 1], NOW).is_err());
        // Flip bits all over: never accepted as the same identity with a broken signature.
        for i in (0..der.len()).step_by(7) {
            let mut bad = der.clone();
            bad[i] ^= 0x01;
            if let Ok(key) = verify_certificate(&bad, NOW) {
                assert_eq!(key.to_peer_id(), identity.public().to_peer_id());
            }
        }
        // A certificate without the extension.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let plain = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            verify_certificate(plain.der().as_ref(), NOW),
            Err(Error::MissingExtension)
        );
        // Expired.
        assert_eq!(
            verify_certificate(&der, 4096 * 366 * 86_400),
            Err(Error::Expired)
        );
        // Once verified (and remembered), validity is still checked on every use.
        let id = identity.public().to_peer_id();
        assert_eq!(verify_certificate(&der, NOW).unwrap().to_peer_id(), id);
        assert_eq!(verify_certificate(&der, NOW).unwrap().to_peer_id(), id);
        assert_eq!(
            verify_certificate(&der, 4096 * 366 * 86_400),
            Err(Error::Expired)
        );
        assert_eq!(verify_certificate(&der, 0), Err(Error::Expired));
    }

    #[test]
    fn verified_cache_is_bounded() {
        let identity = Keypair::generate_ed25519();
        for _ in 0..VERIFIED_CACHE_LEN + 10 {
            let cert = Certificate::generate(&identity).unwrap();
            verify_certificate(cert.cert.as_ref(), NOW).unwrap();
        }
        let cache = verified_cache();
        assert!(cache.entries.len() <= VERIFIED_CACHE_LEN);
        assert_eq!(cache.entries.len(), cache.order.len());
    }
}
