//! Raw QUIC clients for the hostile-client tests: a quinn client built here, with any
//! identity, ALPN and source address, so a test can do what the real agent never would
//! (a wrong ALPN, a stolen identity opening many connections, stalled frames). Test
//! support only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use persona_shared::protocol::{self, AgentMsg, CoordMsg};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client certificate chain and its key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The identity an enrolled agent keeps in its state dir.
pub fn identity(state: &Path) -> Identity {
    (
        vec![CertificateDer::from_pem_file(state.join("cert.pem")).expect("cert.pem")],
        PrivateKeyDer::from_pem_file(state.join("key.pem")).expect("key.pem"),
    )
}

/// A client endpoint bound to `bind`, trusting the coordinator's CA, presenting
/// `identity` and offering `alpn`.
pub fn endpoint(
    bind: SocketAddr,
    ca_pem: &Path,
    identity: Option<Identity>,
    alpn: &[u8],
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca_pem).expect("ca.pem"))
        .expect("CA");
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("identity"),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("QUIC TLS");
    let mut ep = quinn::Endpoint::client(bind).expect("client endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

/// Connects `ep` to `addr` within 10 s.
pub async fn connect_with(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let conn = ep
        .connect(addr, protocol::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .map_err(|_| "handshake timeout".to_string())?
        .map_err(|e| e.to_string())
}

/// A raw QUIC connection from 127.0.0.1 with the given identity and ALPN.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &Path,
    identity: Option<Identity>,
    alpn: &[u8],
) -> Result<quinn::Connection, String> {
    let bind = "127.0.0.1:0".parse().expect("address");
    connect_with(&endpoint(bind, ca_pem, identity, alpn), addr).await
}

/// Reads one whole frame from `rx` (10 s at most) and decodes it.
pub async fn read_answer(rx: &mut quinn::RecvStream) -> Result<CoordMsg, String> {
    let read = persona_shared::wire::read_frame(rx, 1 << 20);
    let body = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    protocol::decode_body::<CoordMsg>(&body).map_err(|e| e.to_string())
}

/// Sends raw bytes on a new stream and returns the coordinator's answer, or the error
/// that ended the exchange (a refused client only learns it on its first stream).
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<CoordMsg, String> {
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    tx.write_all(bytes).await.map_err(|e| e.to_string())?;
    let _ = tx.finish();
    let body = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(1 << 20))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    protocol::decode_frame::<CoordMsg>(&body, 1 << 20)
        .map_err(|e| e.to_string())?
        .map(|(m, _)| m)
        .ok_or_else(|| format!("incomplete answer of {} bytes", body.len()))
}

/// `msg` as one frame.
pub fn frame(msg: &AgentMsg) -> Vec<u8> {
    let mut b = Vec::new();
    protocol::encode_frame(msg, &mut b, usize::MAX).expect("encodable");
    b
}
