//! Serving the API on a listener the caller bound (tests bind port 0).

use std::{future::Future, net::SocketAddr};

use axum::Router;
use tokio::net::TcpListener;

/// Serves `router` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Prints a line users (and test harnesses) read on stdout; a closed stdout
/// is not an error for a server.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
