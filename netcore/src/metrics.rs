//! Every metric walrusfs exports, in one place: the storage node's, the client's and the
//! mount's. Code records through the `metrics` facade with these constants; a process that
//! serves metrics (`--metrics ADDR` on `walrusfs node` and `walrusfs mount`) installs a
//! Prometheus recorder and calls [`describe`]; without one, recording costs a branch.
//!
//! Names follow the Prometheus conventions: a unit suffix (`_bytes`, `_seconds`), `_total` on
//! counters. Labels have a small, fixed set of values (operation and request names, results,
//! node indexes), never blob ids or paths.

/// Label: a request or FUSE operation name.
pub const LABEL_OP: &str = "op";
/// Label: how a request ended (`ok` or an error kind).
pub const LABEL_RESULT: &str = "result";
/// Label: why a connection or request was refused.
pub const LABEL_REASON: &str = "reason";
/// Label: a storage node's index in the committee.
pub const LABEL_NODE: &str = "node";
/// Label: which cache (`memory`, `disk`).
pub const LABEL_CACHE: &str = "cache";

// ---- storage node ----

/// Counter: requests served, by `op` and `result`.
pub const NODE_REQUESTS: &str = "walrusfs_node_requests_total";
/// Counter: connections and requests refused before being served, by `reason`.
pub const NODE_REFUSED: &str = "walrusfs_node_refused_total";
/// Gauge: blobs of which the node holds anything.
pub const NODE_BLOBS: &str = "walrusfs_node_blobs";
/// Gauge: sliver bytes stored.
pub const NODE_SLIVER_BYTES: &str = "walrusfs_node_sliver_bytes";
/// Gauge: bytes the node still accepts (free disk beyond its reserve).
pub const NODE_FREE_BYTES: &str = "walrusfs_node_free_bytes";
/// Counter: sliver bytes received in stores.
pub const NODE_RECEIVED_BYTES: &str = "walrusfs_node_received_bytes_total";
/// Counter: sliver bytes served.
pub const NODE_SERVED_BYTES: &str = "walrusfs_node_served_bytes_total";
/// Gauge: client connections open.
pub const NODE_CONNECTIONS: &str = "walrusfs_node_connections";
/// Counter: damaged slivers the scrubber moved to quarantine.
pub const NODE_QUARANTINED: &str = "walrusfs_node_scrub_quarantined_total";

// ---- client (in the mount and the CLI) ----

/// Histogram: time to store a blob on `n - f` nodes, seconds.
pub const CLIENT_PUT_SECONDS: &str = "walrusfs_client_put_seconds";
/// Histogram: time to fetch and decode a blob, seconds.
pub const CLIENT_GET_SECONDS: &str = "walrusfs_client_get_seconds";
/// Histogram: time to fetch a verified byte range of a blob, seconds.
pub const CLIENT_GET_RANGE_SECONDS: &str = "walrusfs_client_get_range_seconds";
/// Counter: requests to each node, by `node` and `result`.
pub const CLIENT_NODE_REQUESTS: &str = "walrusfs_client_node_requests_total";
/// Histogram: time of one request to one node, by `node`, seconds.
pub const CLIENT_NODE_SECONDS: &str = "walrusfs_client_node_request_seconds";
/// Counter: sliver bytes sent to nodes (stores).
pub const CLIENT_SENT_BYTES: &str = "walrusfs_client_sent_bytes_total";
/// Counter: sliver bytes received from nodes (whole slivers and ranges).
pub const CLIENT_RECEIVED_BYTES: &str = "walrusfs_client_received_bytes_total";

// ---- mount ----

/// Counter: FUSE operations, by `op`.
pub const FUSE_OPS: &str = "walrusfs_fuse_ops_total";
/// Counter: FUSE operations answered with an error, by `op` (not counting ENOENT and
/// ENODATA, the normal answers to a lookup of a new name or a missing attribute).
pub const FUSE_ERRORS: &str = "walrusfs_fuse_errors_total";
/// Counter: bytes applications read.
pub const READ_BYTES: &str = "walrusfs_read_bytes_total";
/// Counter: bytes applications wrote.
pub const WRITTEN_BYTES: &str = "walrusfs_written_bytes_total";
/// Counter: chunk reads served from a cache, by `cache`.
pub const CACHE_HITS: &str = "walrusfs_cache_hits_total";
/// Counter: chunk reads a cache could not serve, by `cache`.
pub const CACHE_MISSES: &str = "walrusfs_cache_misses_total";
/// Gauge: bytes written and not yet stored on the network.
pub const PENDING_BYTES: &str = "walrusfs_upload_pending_bytes";
/// Gauge: files with data not yet stored on the network.
pub const PENDING_FILES: &str = "walrusfs_upload_pending_files";
/// Gauge: age of the oldest data not yet stored, seconds.
pub const PENDING_OLDEST_SECONDS: &str = "walrusfs_upload_pending_oldest_seconds";
/// Gauge: uploads to the network in flight.
pub const UPLOADS_IN_FLIGHT: &str = "walrusfs_uploads_in_flight";
/// Gauge: the archive version this mount published or follows.
pub const ARCHIVE_VERSION: &str = "walrusfs_archive_version";

/// Bucket bounds (seconds) of the latency histograms: 100 µs (a ranged read from a node on a
/// LAN takes well under a millisecond) to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Runs `work` and, if it succeeds, records how long it took in histogram `name`.
pub(crate) async fn timed<T, E>(
    name: &'static str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    let r = work.await;
    if r.is_ok() {
        metrics::histogram!(name).record(start.elapsed().as_secs_f64());
    }
    r
}

/// Registers help text for every metric with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        NODE_REQUESTS,
        "Requests served by the node, by op and result"
    );
    describe_counter!(
        NODE_REFUSED,
        "Connections and requests refused before being served, by reason"
    );
    describe_gauge!(NODE_BLOBS, "Blobs of which the node holds anything");
    describe_gauge!(NODE_SLIVER_BYTES, Unit::Bytes, "Sliver bytes stored");
    describe_gauge!(
        NODE_FREE_BYTES,
        Unit::Bytes,
        "Bytes the node still accepts (free disk beyond its reserve)"
    );
    describe_counter!(NODE_RECEIVED_BYTES, Unit::Bytes, "Sliver bytes received");
    describe_counter!(NODE_SERVED_BYTES, Unit::Bytes, "Sliver bytes served");
    describe_gauge!(NODE_CONNECTIONS, "Client connections open");
    describe_counter!(NODE_QUARANTINED, "Damaged slivers moved to quarantine");
    describe_histogram!(
        CLIENT_PUT_SECONDS,
        Unit::Seconds,
        "Time to store a blob on n - f nodes"
    );
    describe_histogram!(
        CLIENT_GET_SECONDS,
        Unit::Seconds,
        "Time to fetch and decode a blob"
    );
    describe_histogram!(
        CLIENT_GET_RANGE_SECONDS,
        Unit::Seconds,
        "Time to fetch a verified byte range of a blob"
    );
    describe_counter!(
        CLIENT_NODE_REQUESTS,
        "Requests to each storage node, by node and result"
    );
    describe_histogram!(
        CLIENT_NODE_SECONDS,
        Unit::Seconds,
        "Time of one request to one node"
    );
    describe_counter!(
        CLIENT_SENT_BYTES,
        Unit::Bytes,
        "Sliver bytes sent to nodes (stores)"
    );
    describe_counter!(
        CLIENT_RECEIVED_BYTES,
        Unit::Bytes,
        "Sliver bytes received from nodes (whole slivers and ranges)"
    );
    describe_counter!(FUSE_OPS, "FUSE operations, by op");
    describe_counter!(FUSE_ERRORS, "FUSE operations answered with an error, by op");
    describe_counter!(READ_BYTES, Unit::Bytes, "Bytes applications read");
    describe_counter!(WRITTEN_BYTES, Unit::Bytes, "Bytes applications wrote");
    describe_counter!(CACHE_HITS, "Chunk reads served from a cache, by cache");
    describe_counter!(
        CACHE_MISSES,
        "Chunk reads a cache could not serve, by cache"
    );
    describe_gauge!(
        PENDING_BYTES,
        Unit::Bytes,
        "Bytes written and not yet stored on the network"
    );
    describe_gauge!(
        PENDING_FILES,
        "Files with data not yet stored on the network"
    );
    describe_gauge!(
        PENDING_OLDEST_SECONDS,
        Unit::Seconds,
        "Age of the oldest data not yet stored"
    );
    describe_gauge!(UPLOADS_IN_FLIGHT, "Uploads to the network in flight");
    describe_gauge!(
        ARCHIVE_VERSION,
        "Archive version this mount published or follows"
    );
}
