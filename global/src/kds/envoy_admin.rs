//! The global's end of `GlobalKDSService.StreamXDSConfigs`/`StreamStats`/
//! `StreamClusters` ([`meridian_sync_proto::envoy_admin`]): each zone opens
//! one stream per kind; [`EnvoyAdmin::ask`] sends a request down the
//! zone's stream and waits for the answer carrying its id.
//!
//! A zone connected to another instance of the global (replicas on one
//! PostgreSQL) is not reachable from this one: the incumbent forwards
//! between instances (`InterCPEnvoyAdminForwardService`), Meridian answers
//! that the zone is not connected here.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use meridian_sync_proto::{
    driver::lock,
    envoy_admin::{AdminAnswer, AdminKind, AdminRequest, AdminRequestMessage, AdminResponseMessage},
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{KdsServer, stream::watch_allowed};

/// Requests queued towards one zone's stream; a zone that stops reading
/// makes further asks fail at once instead of piling up.
const QUEUE: usize = 16;

/// Why [`EnvoyAdmin::ask`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The zone has no stream of this kind open on this global instance.
    #[error(
        "zone {zone:?} is not connected to this global instance (or does not serve {kind} inspections); it cannot be asked"
    )]
    NotConnected { zone: String, kind: &'static str },
    /// The zone did not answer within the deadline.
    #[error("zone {zone:?} did not answer within {after:?}")]
    Timeout { zone: String, after: Duration },
    /// The zone answered with an error (the Dataplane's Envoy admin unreachable, ...).
    #[error("zone {zone:?} answered: {reason}")]
    Zone { zone: String, reason: String },
}

#[derive(Default)]
struct Inner {
    /// (zone, kind) → (stream serial, the stream's request queue).
    streams: HashMap<(String, AdminKind), (u64, mpsc::Sender<AdminRequest>)>,
    /// request id → who waits for its answer.
    pending: HashMap<String, oneshot::Sender<AdminAnswer>>,
    next: u64,
}

/// The open inspection streams of this global instance, and the requests
/// waiting for an answer. Clones share them.
#[derive(Clone, Default)]
pub struct EnvoyAdmin {
    inner: Arc<Mutex<Inner>>,
}

impl EnvoyAdmin {
    /// Sends `request` (its id is set here) to `zone` and waits at most
    /// `timeout` for the answer.
    ///
    /// Errors: [`AskError`]: not connected, timed out, or the zone's error.
    pub async fn ask(&self, zone: &str, mut request: AdminRequest, timeout: Duration) -> Result<Vec<u8>, AskError> {
        let (tx, rx) = oneshot::channel();
        let kind = request.kind;
        let queue = {
            let mut inner = lock(&self.inner);
            inner.next += 1;
            request.request_id = format!("{:016x}-{}", rand::random::<u64>(), inner.next);
            let not_connected = || AskError::NotConnected { zone: zone.to_string(), kind: kind.segment() };
            let queue =
                inner.streams.get(&(zone.to_string(), kind)).map(|(_, q)| q.clone()).ok_or_else(not_connected)?;
            inner.pending.insert(request.request_id.clone(), tx);
            queue
        };
        let id = request.request_id.clone();
        let outcome = tokio::time::timeout(timeout, async {
            if queue.try_send(request).is_err() {
                return Err(AskError::NotConnected { zone: zone.to_string(), kind: kind.segment() });
            }
            match rx.await {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(reason)) => Err(AskError::Zone { zone: zone.to_string(), reason }),
                // The stream closed before answering.
                Err(_) => Err(AskError::NotConnected { zone: zone.to_string(), kind: kind.segment() }),
            }
        })
        .await;
        lock(&self.inner).pending.remove(&id);
        outcome.unwrap_or_else(|_| Err(AskError::Timeout { zone: zone.to_string(), after: timeout }))
    }

    fn register(&self, zone: &str, kind: AdminKind) -> (u64, mpsc::Receiver<AdminRequest>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut inner = lock(&self.inner);
        inner.next += 1;
        let serial = inner.next;
        // A newer stream of the same zone and kind replaces the older one.
        inner.streams.insert((zone.to_string(), kind), (serial, tx));
        (serial, rx)
    }

    fn unregister(&self, zone: &str, kind: AdminKind, serial: u64) {
        let mut inner = lock(&self.inner);
        let key = (zone.to_string(), kind);
        if inner.streams.get(&key).is_some_and(|(s, _)| *s == serial) {
            inner.streams.remove(&key);
        }
    }

    fn answer(&self, id: &str, answer: AdminAnswer) {
        if let Some(tx) = lock(&self.inner).pending.remove(id) {
            let _ = tx.send(answer);
        } else {
            tracing::debug!(request_id = id, "answer to a request nobody waits for (timed out)");
        }
    }
}

/// Serves one inspection stream of kind `Req::KIND` for an authenticated
/// zone: requests down, answers up, until either side ends, the process
/// stops, or the zone's token stops being valid.
pub(super) async fn serve_stream<Resp: AdminResponseMessage, Req: AdminRequestMessage>(
    server: &KdsServer,
    request: Request<Streaming<Resp>>,
) -> Result<Response<ReceiverStream<Result<Req, Status>>>, Status> {
    let caller = server.authenticate(request.metadata()).await?;
    let kind = Req::KIND;
    let (serial, mut requests) = server.envoy_admin.register(&caller.zone, kind);
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut inbound = request.into_inner();
    let response = server.response(ReceiverStream::new(rx));
    let server = server.clone();
    tracing::debug!(zone = %caller.zone, kind = kind.segment(), "zone opened an inspection stream");
    tokio::spawn(async move {
        let allowed = watch_allowed(&server, &caller.zone, &caller.token, caller.expires, caller.access.clone());
        let mut allowed = std::pin::pin!(allowed);
        loop {
            tokio::select! {
                () = server.shutdown.cancelled() => break,
                status = &mut allowed => {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                r = requests.recv() => match r {
                    Some(r) => if tx.send(Ok(Req::from_request(&r))).await.is_err() { break },
                    None => break,
                },
                m = inbound.message() => match m {
                    Ok(Some(resp)) => {
                        let (id, answer) = resp.into_answer();
                        server.envoy_admin.answer(&id, answer);
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        server.envoy_admin.unregister(&caller.zone, kind, serial);
        tracing::debug!(zone = %caller.zone, kind = kind.segment(), "inspection stream closed");
    });
    Ok(response)
}
