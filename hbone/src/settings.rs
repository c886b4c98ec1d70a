//! HTTP/2 settings sized for tunnelling bulk TCP: windows large enough that one stream can
//! fill a fast link, without preallocating anything (windows are credit, not buffers).

/// Per-stream receive window.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window (shared by its streams).
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest frame we accept.
const MAX_FRAME: u32 = 1024 * 1024;
/// Streams one connection carries at most (Istio's pool default).
pub(crate) const MAX_STREAMS: u32 = 100;

pub(crate) fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS);
    b
}

pub(crate) fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    b
}
