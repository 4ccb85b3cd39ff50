//! The HTTP listener of `tidings serve`: what a connection may cost before it is closed.
//!
//! Part of it faces the internet (acknowledgment links, the guardian app, provider
//! webhooks), so a client that opens connections and sends nothing, or half a request
//! header, or a body a byte at a time, must not hold the server's memory or sockets:
//! request headers must arrive within `header_read_timeout` (also the idle time allowed
//! between requests of a kept-alive connection), a body must keep arriving
//! (`body_read_timeout` between its pieces), and at most `max_connections` are served at
//! once; further clients wait in the kernel's accept queue. Each request carries the peer's
//! address as `ConnectInfo`, for the per-client limits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// The bounds on each connection (`Config`'s `http_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request's whole header, and to start the next request of a
    /// kept-alive connection.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// Largest request header (request line and fields).
    pub max_header_bytes: usize,
    /// How long a shutdown waits for requests in hand before dropping them.
    pub drain_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets the
/// requests in hand finish (up to `limits.drain_timeout`).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .max_header_size(limits.max_header_bytes);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut served = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    // Said once when the cap is reached, and again only after half the connections have
    // come free: a server kept at its cap says it once, not once per connection.
    let mut said_full = false;
    loop {
        // A permit first: at the cap, clients wait in the accept queue, not in memory.
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                said_full &= connections.available_permits() < limits.max_connections / 2;
                permit
            }
            Err(_) => {
                if !said_full {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "every connection is in use: new clients wait to be accepted until one closes (http_max_connections)"
                    );
                    said_full = true;
                }
                tokio::select! {
                    permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        served.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
        while served.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = served.len(),
            "requests still in hand at the end of the drain time"
        );
    }
    served.abort_all();
    Ok(())
}

/// The client's address: the peer, or where the peer is a trusted proxy, the last
/// address in `X-Forwarded-For` that is not one of `trusted` (a client can prepend
/// anything to that header; only what the proxies appended can be believed).
pub fn client_address(
    peer: Option<SocketAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let peer = peer?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<std::net::IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Some(peer);
        };
        for hop in value.split(',') {
            match hop.trim().parse() {
                Ok(address) => hops.push(address),
                Err(_) => return Some(peer),
            }
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|hop| !trusted.contains(hop))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use std::net::IpAddr;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", v.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let peer = Some(SocketAddr::new(proxy, 5000));
        let claimed = headers(&["203.0.113.9"]);
        // Untrusted peer: what it claims is ignored.
        assert_eq!(client_address(peer, &claimed, &[]), Some(proxy));
        // Trusted proxy: the address it appended.
        assert_eq!(
            client_address(peer, &claimed, &[proxy]),
            Some("203.0.113.9".parse().unwrap())
        );
        // A client's own forged first hop is passed over: the proxy appended the real one.
        let forged = headers(&["1.2.3.4, 198.51.100.7"]);
        assert_eq!(
            client_address(peer, &forged, &[proxy]),
            Some("198.51.100.7".parse().unwrap())
        );
        // Several proxies, each trusted: the first untrusted from the right.
        let second: IpAddr = "10.0.0.2".parse().unwrap();
        let chained = headers(&["198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            client_address(peer, &chained, &[proxy, second]),
            Some("198.51.100.7".parse().unwrap())
        );
        // Garbage or no header from a trusted proxy: the proxy itself.
        assert_eq!(
            client_address(peer, &headers(&["not an address"]), &[proxy]),
            Some(proxy)
        );
        assert_eq!(
            client_address(peer, &HeaderMap::new(), &[proxy]),
            Some(proxy)
        );
        assert_eq!(client_address(None, &claimed, &[proxy]), None);
    }
}
