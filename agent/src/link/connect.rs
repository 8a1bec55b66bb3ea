//! Reaching the coordinator's address: resolution on every attempt (the address behind
//! a name may change) and a client-only QUIC endpoint of the right address family. Used
//! by the link session and by enrollment. What this is not: TLS (`tls`) or the protocol.

use std::net::SocketAddr;

use super::error::LinkError;

/// Resolves HOST:PORT (again on every attempt: the coordinator's address may change).
pub(crate) async fn resolve(addr: &str) -> Result<SocketAddr, LinkError> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| LinkError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    addrs.next().ok_or_else(|| LinkError::NoAddress {
        addr: addr.to_owned(),
    })
}

/// A client-only QUIC endpoint on an ephemeral port of the target's address family.
pub(crate) fn client_endpoint(target: SocketAddr) -> Result<quinn::Endpoint, LinkError> {
    let bind: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    quinn::Endpoint::client(bind).map_err(LinkError::Endpoint)
}
