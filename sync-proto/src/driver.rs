//! The two loops that drive every delta stream: [`send_loop`] (one
//! [`DeltaSender`] per type, fed by a [`Source`]) and [`receive_loop`] (one
//! [`DeltaReceiver`] per type, writing through an [`Apply`]). KDS
//! global→zone, KDS zone→global (both ends) and Envoy's ADS (delta, and
//! state of the world translated by its wire) are thin adapters over them.
//!
//! ```text
//!                  ┌──────────── cancel (CancellationToken) ────────────┐
//!                  ▼                                                     ▼
//!   peer ──req──▶ SendWire::recv ─▶ send_loop ◀── Source::changed / desired
//!   peer ◀─resp── SendWire::send ◀─┘    └──▶ Observer (metrics, insights)
//!
//!   peer ──resp─▶ RecvWire::recv ─▶ receive_loop ──▶ Apply::apply ─▶ ACK/NACK ─▶ RecvWire::send
//! ```
//!
//! Behaviour shared by every stream:
//! - A subscription to a type this side does not serve gets one empty
//!   response (the type URL, no resources, a nonce) and a debug log line;
//!   the stream stays up (a Kuma zone subscribes to every type it knows).
//! - A response of a type that was not asked for is ignored with a debug
//!   log line; the stream stays up.
//! - The first request of a type is answered even when nothing differs
//!   (Envoy waits for its initial fetch otherwise); an ACK alone is never
//!   answered (Envoy would ACK again, forever).
//! - Each loop ends when the token is cancelled, the peer goes away, the
//!   source fails or a write fails, and says which ([`Ended`]).

pub mod metrics;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse},
};
use tokio_util::sync::CancellationToken;

use crate::delta::{DeltaReceiver, DeltaSender, DesiredSet, DesiredView, RequestKind, SendStats};

/// Change instants remembered per stream until their ACK (for the
/// change-to-ACK histogram); a peer that never settles loses the oldest.
const MAX_UNSETTLED: usize = 256;

/// An error from an adapter's wire, source or store, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a loop ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// The stop token was cancelled (shutdown, or the adapter cut the peer off).
    #[error("stopped")]
    Cancelled,
    /// The peer closed its side, or stopped reading ours.
    #[error("the peer closed the stream")]
    PeerClosed,
    /// The transport failed (a gRPC status, a reset).
    #[error("stream failed: {0}")]
    Wire(BoxError),
    /// The source of desired resources failed.
    #[error("source of resources failed: {0}")]
    Source(BoxError),
    /// Received resources could not be written.
    #[error("cannot apply received resources: {0}")]
    Apply(BoxError),
}

/// What one side wants the peer to hold, per type.
pub trait Source: Send {
    /// A desired set, cheap to produce and clone (an `Arc`, a [`crate::delta::SharedSet`]).
    type Set: DesiredView + Clone + Send + Sync;
    type Error: std::error::Error + Send + Sync + 'static;
    /// Whether this side serves `type_url`.
    fn serves(&self, type_url: &str) -> bool;
    /// The current desired set of a served `type_url`.
    fn desired(&mut self, type_url: &str) -> Self::Set;
    /// The names that differ between two sets of one type, when the source
    /// can tell cheaply ([`crate::delta::shared_diff`]); `None` diffs everything.
    fn changed_keys(&self, _old: &Self::Set, _new: &Self::Set) -> Option<Vec<String>> {
        None
    }
    /// Waits for the next change; returns the type URLs that changed.
    /// Must be cancel-safe (it is raced against the peer's requests).
    fn changed(&mut self) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;
}

/// A request as the sending loop sees it.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub request: DeltaDiscoveryRequest,
    /// Answer even when nothing differs (state of the world: the names
    /// changed, and its response always carries the whole set).
    pub force: bool,
}

/// The sending side's transport.
pub trait SendWire: Send {
    type Error: std::error::Error + Send + Sync + 'static;
    /// State-of-the-world wires need the whole subscribed set with each response.
    const FULL_STATE: bool = false;
    /// The next request; `Ok(None)` when the peer closed or stopped reading.
    /// Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Incoming>, Self::Error>> + Send;
    /// Sends one response (`full`: the whole subscribed set, when
    /// [`Self::FULL_STATE`]); `false` once the peer is gone.
    fn send(&mut self, response: DeltaDiscoveryResponse, full: Option<DesiredSet>)
    -> impl Future<Output = bool> + Send;
}

/// The receiving side's transport.
pub trait RecvWire: Send {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The next response; `Ok(None)` when the peer closed. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<DeltaDiscoveryResponse>, Self::Error>> + Send;
    /// Sends a request (first request, ACK, NACK); `false` once the peer is gone.
    fn send(&mut self, request: DeltaDiscoveryRequest) -> impl Future<Output = bool> + Send;
}

/// Writes what a response carries and says how to answer it.
pub trait Apply: Send {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Applies `response` of `type_url`, records it in `receiver`, and
    /// returns the ACK or NACK ([`DeltaReceiver::ack`]/[`DeltaReceiver::nack`]).
    fn apply(
        &mut self,
        type_url: &str,
        receiver: &mut DeltaReceiver,
        response: &DeltaDiscoveryResponse,
    ) -> impl Future<Output = Result<DeltaDiscoveryRequest, Self::Error>> + Send;
}

/// Callbacks for metrics and insights. On a receiving loop "sent" means a
/// response the peer sent and this side answered. `stats` are the type's
/// counters on this stream after the event.
pub trait Observer: Send {
    fn subscribed(&mut self, _type_url: &str, _held: usize) {}
    fn sent(&mut self, _type_url: &str, _response: &DeltaDiscoveryResponse, _stats: &SendStats) {}
    /// `change_to_ack`: from the source's change to this ACK, when the
    /// response was caused by a change.
    fn acked(&mut self, _type_url: &str, _nonce: &str, _change_to_ack: Option<Duration>, _stats: &SendStats) {}
    fn nacked(&mut self, _type_url: &str, _nonce: &str, _reason: &str, _stats: &SendStats) {}
    fn stale(&mut self, _type_url: &str, _nonce: &str) {}
    /// The peer asked for (or sent) a type this side does not handle.
    fn unserved(&mut self, _type_url: &str) {}
    /// The source changed and whatever differed was sent (possibly
    /// nothing: a change that alters no resource the peer holds).
    fn source_changed(&mut self) {}
}

/// An observer that records nothing.
impl Observer for () {}

/// How a sending loop names and sizes its responses.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Nonce prefix, unique per stream (nonces are `<prefix>-<type>-<n>`).
    pub nonce_prefix: String,
    /// Byte budget of one response's resources ([`DeltaSender::next_response`]).
    pub max_bytes: usize,
    /// A resource alone over this many bytes is withheld and reported
    /// ([`DeltaSender::set_max_resource_bytes`]); `None`: every resource is
    /// sent (one over `max_bytes` travels alone).
    pub max_resource_bytes: Option<usize>,
}

struct TypeState<Set> {
    sender: DeltaSender,
    served: bool,
    /// The set the peer was last brought up to date with (keyed diffs start from it).
    last: Option<Set>,
    /// When the source last changed this type without the peer having it yet.
    changed_at: Option<Instant>,
    /// nonce → the change that response carried.
    caused_by: HashMap<String, Instant>,
    /// The nonce of the last response sent while the peer has not answered
    /// it (ACK or NACK). Source changes of the type wait for that answer and
    /// then go out together in one keyed diff: one response in flight per
    /// type, as go-control-plane's servers (Kuma's KDS, Envoy's management
    /// servers) re-arm a type's watch only on the next request. Without
    /// it a burst of writes became one small response per write, each
    /// applied and ACKed separately by the peer, which fell behind.
    /// A peer that does not answer holds changes at most [`ACK_WAIT`]
    /// (from the send), then they go out anyway.
    awaiting: Option<(String, tokio::time::Instant)>,
    /// A source change is held for the answer to `awaiting`.
    deferred: bool,
}

/// How long changes of a type wait for the peer's answer to the response in
/// flight before they are sent anyway (a peer that never ACKs must not stall
/// them). Envoy and Kuma's zones answer every response, within milliseconds
/// unless busy applying a large one.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// Drives the sending side of one stream until it ends; returns why.
pub async fn send_loop<S: Source, W: SendWire, O: Observer>(
    source: &mut S,
    wire: &mut W,
    observer: &mut O,
    config: &SendConfig,
    cancel: &CancellationToken,
) -> Ended {
    let mut types: BTreeMap<String, TypeState<S::Set>> = BTreeMap::new();
    loop {
        let due = next_due(&types);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ended::Cancelled,
            msg = wire.recv() => {
                let incoming = match msg {
                    Ok(Some(i)) => i,
                    Ok(None) => return Ended::PeerClosed,
                    Err(e) => return Ended::Wire(Box::new(e)),
                };
                let type_url = incoming.request.type_url.clone();
                let ts = types.entry(type_url.clone()).or_insert_with(|| TypeState {
                    sender: {
                        let mut s =
                            DeltaSender::new(type_url.clone(), format!("{}-{}", config.nonce_prefix, short(&type_url)));
                        if let Some(max) = config.max_resource_bytes {
                            s.set_max_resource_bytes(max);
                        }
                        s
                    },
                    served: source.serves(&type_url),
                    last: None,
                    changed_at: None,
                    caused_by: HashMap::new(),
                    awaiting: None,
                    deferred: false,
                });
                let kind = ts.sender.on_request(&incoming.request);
                // An ACK, NACK or stale nonce that changes no subscription
                // changes nothing the peer should get: only what the source
                // changed since the last flush can be due (a change not yet
                // signalled), so it is diffed by keys when the source can
                // tell them, instead of walking the whole set once per ACK
                // (with many resources held and many peers, that walk was
                // most of the sender's CPU).
                let settles = matches!(
                    kind,
                    RequestKind::Ack { .. } | RequestKind::Nack { .. } | RequestKind::Stale { .. }
                ) && incoming.request.resource_names_subscribe.is_empty()
                    && incoming.request.resource_names_unsubscribe.is_empty();
                let force = match &kind {
                    RequestKind::Initial => {
                        if ts.served {
                            observer.subscribed(&type_url, incoming.request.initial_resource_versions.len());
                        } else {
                            tracing::debug!(type_url = %type_url, "peer subscribed to a type this side does not serve; answering empty");
                            observer.unserved(&type_url);
                        }
                        true
                    }
                    RequestKind::Subscribe => incoming.force,
                    RequestKind::Ack { nonce } => {
                        let since = ts.caused_by.remove(nonce).map(|t| t.elapsed());
                        observer.acked(&type_url, nonce, since, &ts.sender.stats);
                        incoming.force
                    }
                    RequestKind::Nack { nonce, reason } => {
                        ts.caused_by.remove(nonce);
                        tracing::debug!(type_url = %type_url, %nonce, %reason, "peer rejected a response");
                        observer.nacked(&type_url, nonce, reason, &ts.sender.stats);
                        incoming.force
                    }
                    RequestKind::Stale { nonce } => {
                        tracing::debug!(type_url = %type_url, %nonce, "stale nonce");
                        observer.stale(&type_url, nonce);
                        false
                    }
                };
                if let RequestKind::Ack { nonce } | RequestKind::Nack { nonce, .. } = &kind
                    && ts.awaiting.as_ref().is_some_and(|(n, _)| n == nonce)
                {
                    ts.awaiting = None;
                    ts.deferred = false;
                }
                // An answer to an older response while the latest is still
                // unanswered: what changed waits for the latest's answer.
                if settles && !force && ts.awaiting.is_some() {
                    continue;
                }
                let keyed = settles && !force;
                if !flush::<S, W, O>(source, wire, observer, config, &type_url, ts, force, keyed).await {
                    return Ended::PeerClosed;
                }
            }
            () = sleep_until_due(due) => {
                let now = tokio::time::Instant::now();
                for (type_url, ts) in types.iter_mut() {
                    let due = ts.deferred && ts.awaiting.as_ref().is_some_and(|(_, at)| now >= *at + ACK_WAIT);
                    if !due {
                        continue;
                    }
                    if let Some((nonce, _)) = &ts.awaiting {
                        tracing::debug!(type_url = %type_url, %nonce, "no answer to the response in flight; sending held changes anyway");
                    }
                    ts.awaiting = None;
                    ts.deferred = false;
                    if !flush::<S, W, O>(source, wire, observer, config, type_url, ts, false, true).await {
                        return Ended::PeerClosed;
                    }
                }
            }
            changed = source.changed() => {
                let changed = match changed {
                    Ok(c) => c,
                    Err(e) => return Ended::Source(Box::new(e)),
                };
                let now = Instant::now();
                for type_url in changed {
                    let Some(ts) = types.get_mut(&type_url).filter(|t| t.served && t.sender.started()) else { continue };
                    ts.changed_at.get_or_insert(now);
                    if ts.awaiting.is_some() {
                        // Sent with the answer to the response in flight (the
                        // keyed diff from the last flush covers this change).
                        ts.deferred = true;
                        continue;
                    }
                    if !flush::<S, W, O>(source, wire, observer, config, &type_url, ts, false, true).await {
                        return Ended::PeerClosed;
                    }
                }
                observer.source_changed();
            }
        }
    }
}

/// When the earliest type whose changes are held for an answer is due
/// ([`ACK_WAIT`] after its response went out); `None` when none is held.
fn next_due<Set>(types: &BTreeMap<String, TypeState<Set>>) -> Option<tokio::time::Instant> {
    types.values().filter(|t| t.deferred).filter_map(|t| t.awaiting.as_ref().map(|(_, at)| *at + ACK_WAIT)).min()
}

/// Sleeps until `due`; forever when `None`.
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends what the peer needs of one type; `false` once the peer is gone.
/// `keyed`: a source change, or a request that changed no subscription
/// (ACK, NACK), diffed against the set of the last flush by the keys that
/// differ when the source can tell them; otherwise (first request,
/// subscription change, a source that cannot tell) the whole set is diffed.
#[allow(clippy::too_many_arguments)]
async fn flush<S: Source, W: SendWire, O: Observer>(
    source: &mut S,
    wire: &mut W,
    observer: &mut O,
    config: &SendConfig,
    type_url: &str,
    ts: &mut TypeState<S::Set>,
    mut force: bool,
    keyed: bool,
) -> bool {
    let empty = DesiredSet::new();
    let set = ts.served.then(|| source.desired(type_url));
    let view: &dyn DesiredViewSync = match &set {
        Some(s) => s,
        None => &empty,
    };
    let keys = match (&set, &ts.last) {
        (Some(new), Some(old)) if keyed => source.changed_keys(old, new),
        _ => None,
    };
    let changed_at = ts.changed_at.take();
    loop {
        let next = match &keys {
            Some(k) => ts.sender.next_response_keys(view, k, config.max_bytes, force),
            None => ts.sender.next_response(view, config.max_bytes, force),
        };
        let Some(resp) = next else { break };
        force = false;
        tracing::debug!(type_url, resources = resp.resources.len(), removed = resp.removed_resources.len(), nonce = %resp.nonce, "sending");
        if let Some(t) = changed_at {
            if ts.caused_by.len() >= MAX_UNSETTLED {
                ts.caused_by.clear();
            }
            ts.caused_by.insert(resp.nonce.clone(), t);
        }
        observer.sent(type_url, &resp, &ts.sender.stats);
        let full = W::FULL_STATE
            .then(|| view.entries().filter(|(n, _)| ts.sender.wants(n)).map(|(n, d)| (n.clone(), d.clone())).collect());
        let nonce = resp.nonce.clone();
        if !wire.send(resp, full).await {
            return false;
        }
        ts.awaiting = Some((nonce, tokio::time::Instant::now()));
    }
    ts.last = set;
    true
}

/// [`DesiredView`] usable across an await in a `Send` future.
trait DesiredViewSync: DesiredView + Sync {}
impl<T: DesiredView + Sync> DesiredViewSync for T {}

/// Locks a mutex of plain bookkeeping data, the one way every crate
/// handles poisoning: a panic elsewhere while the lock was held leaves data
/// that is still consistent (counters, maps replaced whole), so the guard
/// is taken anyway rather than spreading the panic to every stream.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last path segment of a type URL (nonce readability).
fn short(type_url: &str) -> &str {
    type_url.rsplit(['/', '.']).next().unwrap_or(type_url)
}

/// Drives the receiving side of one stream: sends each receiver's first
/// request (with what it holds), then applies every response and answers
/// it, until the stream ends; returns why.
pub async fn receive_loop<W: RecvWire, A: Apply, O: Observer>(
    receivers: &mut BTreeMap<String, DeltaReceiver>,
    node: Option<Node>,
    wire: &mut W,
    apply: &mut A,
    observer: &mut O,
    cancel: &CancellationToken,
) -> Ended {
    for r in receivers.values() {
        if !wire.send(r.initial_request(node.clone())).await {
            return Ended::PeerClosed;
        }
    }
    let mut stats: BTreeMap<String, SendStats> = BTreeMap::new();
    loop {
        let resp = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ended::Cancelled,
            msg = wire.recv() => match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Ended::PeerClosed,
                Err(e) => return Ended::Wire(Box::new(e)),
            },
        };
        let Some(receiver) = receivers.get_mut(&resp.type_url) else {
            tracing::debug!(type_url = %resp.type_url, "ignoring a response of a type this side did not ask for");
            observer.unserved(&resp.type_url);
            continue;
        };
        let reply = match apply.apply(&resp.type_url, receiver, &resp).await {
            Ok(r) => r,
            Err(e) => return Ended::Apply(Box::new(e)),
        };
        let s = stats.entry(resp.type_url.clone()).or_default();
        s.responses_sent += 1;
        s.resources_sent += resp.resources.len() as u64;
        observer.sent(&resp.type_url, &resp, s);
        match &reply.error_detail {
            Some(status) => {
                s.responses_nacked += 1;
                s.last_nack_reason = Some(status.message.clone());
                observer.nacked(&resp.type_url, &resp.nonce, &status.message, s);
            }
            None => {
                s.responses_acked += 1;
                observer.acked(&resp.type_url, &resp.nonce, None, s);
            }
        }
        if !wire.send(reply).await {
            return Ended::PeerClosed;
        }
    }
}

#[cfg(test)]
#[path = "driver/tests.rs"]
mod tests;
