//! Admission of connections: a QUIC Retry validates the address before any handshake state
//! exists; handshakes are limited in all, per address and in time; an established connection
//! is held to its key's cap, and untrusted keys to half the node's connections and a
//! per-address share (see the server's module docs).

use std::net::IpAddr;

use tracing::{debug, warn};

use super::{State, TRUSTED_WINDOW};
use crate::identity::{peer_key, PublicKey};
use crate::node::limits::LimitGuard;

/// A handshake admitted to run, holding its slots.
pub(super) struct Handshake {
    incoming: quinn::Incoming,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _source: LimitGuard<IpAddr>,
}

/// The slots an established connection holds while it is served.
pub(super) struct ConnectionSlots {
    _total: tokio::sync::OwnedSemaphorePermit,
    _untrusted: Option<(tokio::sync::OwnedSemaphorePermit, LimitGuard<IpAddr>)>,
    _key: Option<LimitGuard<PublicKey>>,
}

/// Decides on an incoming connection before any handshake state exists: an address not yet
/// validated is sent a Retry (stateless: a spoofed source never answers it); a validated one
/// needs a free handshake slot, in all and for its address.
pub(super) fn admit_handshake(state: &State, incoming: quinn::Incoming) -> Option<Handshake> {
    if !incoming.remote_address_validated() {
        if incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
        } else {
            incoming.ignore();
        }
        return None;
    }
    let ip = incoming.remote_address().ip();
    let Some(source) = state.handshakes_per_source.try_acquire(ip) else {
        debug!(%ip, "too many handshakes from one address; refused");
        refused("handshakes_per_source");
        incoming.refuse();
        return None;
    };
    let Ok(slot) = state.handshakes.clone().try_acquire_owned() else {
        warn!("handshake limit reached; refusing a connection");
        refused("handshakes");
        incoming.refuse();
        return None;
    };
    Some(Handshake {
        incoming,
        _slot: slot,
        _source: source,
    })
}

impl Handshake {
    /// Runs the handshake (bounded in time; its slots are freed when it ends) and admits the
    /// connection under its key's limits.
    pub(super) async fn finish(
        self,
        state: &State,
    ) -> Option<(quinn::Connection, ConnectionSlots)> {
        let remote = self.incoming.remote_address();
        let conn = match tokio::time::timeout(state.config.handshake_timeout(), self.incoming).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                debug!(%remote, "handshake failed: {e}");
                return None;
            }
            Err(_) => {
                debug!(%remote, "handshake timed out");
                return None;
            }
        };
        let peer = peer_key(&conn);
        let trusted = peer.is_some_and(|k| state.trusted.contains(&k));
        let refuse = |why: &str, reason: &'static str| {
            debug!(%remote, peer = ?peer, "connection refused: {why}");
            refused(reason);
            conn.close(1u32.into(), why.as_bytes());
            None
        };
        let key = match peer {
            Some(k) => match state.per_key.try_acquire(k) {
                Some(g) => Some(g),
                None => return refuse("too many connections from this key", "per_key"),
            },
            None => None,
        };
        let untrusted = if trusted {
            None
        } else {
            let Ok(slot) = state.untrusted_connections.clone().try_acquire_owned() else {
                return refuse("untrusted connection limit reached", "untrusted");
            };
            let Some(source) = state.untrusted_per_source.try_acquire(remote.ip()) else {
                return refuse(
                    "too many untrusted connections from this address",
                    "untrusted_per_source",
                );
            };
            Some((slot, source))
        };
        let Ok(total) = state.connections.clone().try_acquire_owned() else {
            warn!("connection limit reached; refusing a connection");
            return refuse("connection limit reached", "connections");
        };
        if trusted {
            conn.set_receive_window(TRUSTED_WINDOW.into());
        }
        Some((
            conn,
            ConnectionSlots {
                _total: total,
                _untrusted: untrusted,
                _key: key,
            },
        ))
    }
}

/// Counts a refusal in the node's metrics.
pub(super) fn refused(reason: &'static str) {
    metrics::counter!(crate::metrics::NODE_REFUSED, crate::metrics::LABEL_REASON => reason)
        .increment(1);
}
