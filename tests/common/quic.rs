//! Raw QUIC to a node, for tests that send hand-made requests or play a client the node does
//! not know: connect under any key from any local address, encode a request, exchange one.

use std::sync::Arc;
use std::time::Duration;

use netcore::committee::Committee;
use netcore::identity::Identity;
use netcore::wire::{self, Request, RequestFrame, Response, PROTOCOL_VERSION};

use super::Testnet;

/// A QUIC connection from local address `from` to node `node` under `id`.
pub async fn connect(
    committee: &Committee,
    node: usize,
    id: &Identity,
    from: &str,
) -> Result<quinn::Connection, String> {
    let info = &committee.nodes[node];
    let tls = id.client_tls(info.public_key).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint =
        netcore::transport::endpoint(format!("{from}:0").parse().unwrap(), None).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(netcore::transport::transport_config(64));
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(info.address, "walrusfs")
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// The testnet's committee and its trusted client key.
pub fn committee_and_client(net: &Testnet) -> (Committee, Identity) {
    (
        Committee::load(&net.dir.path().join("committee.toml")).unwrap(),
        Identity::load(&net.dir.path().join("client.key")).unwrap(),
    )
}

/// `request` as a frame of the current protocol version.
pub async fn frame(request: Request) -> Vec<u8> {
    let mut bytes = Vec::new();
    let req = RequestFrame {
        version: PROTOCOL_VERSION,
        request,
    };
    wire::write_frame(&mut bytes, &req).await.unwrap();
    bytes
}

/// Sends `bytes` on a fresh stream and returns the node's decoded response.
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    wire::read_frame(&mut recv).await.unwrap()
}
