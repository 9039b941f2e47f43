//! QUIC transport settings shared by clients and nodes.

use std::sync::Arc;
use std::time::Duration;

/// Per-stream flow-control window. One stream carries one sliver; a window of a few MiB keeps
/// a loopback or LAN link busy without letting one stream hog the connection.
const STREAM_WINDOW: u32 = 8 << 20;
/// Per-connection flow-control window across all streams.
const CONNECTION_WINDOW: u32 = 64 << 20;
/// A connection silent this long is closed; keep-alives keep healthy idle connections open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive interval, well under [`IDLE_TIMEOUT`].
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// UDP socket buffer size asked for. Loopback and LAN bursts from several peers overflow the
/// default (~208 KiB) and every dropped datagram halves QUIC's congestion window; the kernel
/// caps the request at `net.core.rmem_max`/`wmem_max`.
const UDP_BUFFER: usize = 8 << 20;

/// Binds a UDP socket for a QUIC endpoint with large kernel buffers.
pub fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer than asked is not an error, only slower.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC endpoint on `addr` (a server if `server` is given) over [`bind_udp`]. A server
/// gives the keys of its stateless resets and connection ids (`Identity::endpoint_keys`: the
/// same after a restart, so the restarted server can reset its former connections); a
/// client needs none.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<(quinn::ServerConfig, ([u8; 32], u64))>,
) -> std::io::Result<quinn::Endpoint> {
    let (config, server) = match server {
        Some((server, (reset_key, cid_key))) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
            let mut config = quinn::EndpointConfig::new(Arc::new(key));
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            (config, Some(server))
        }
        None => (quinn::EndpointConfig::default(), None),
    };
    quinn::Endpoint::new(
        config,
        server,
        bind_udp(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Transport configuration allowing `max_streams` concurrent requests per connection.
pub fn transport_config(max_streams: u32) -> Arc<quinn::TransportConfig> {
    server_transport_config(max_streams, CONNECTION_WINDOW)
}

/// Transport configuration of a node: `max_streams` concurrent requests per connection and a
/// connection receive window of `window` bytes until the node raises it for a trusted peer
/// (`Connection::set_receive_window`).
pub fn server_transport_config(max_streams: u32, window: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u8.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(window.into())
        .send_window(u64::from(CONNECTION_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}
