//! The loops over in-memory channels: no sockets.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::delta::{Desired, any_version};

/// A source with one served type `A`, changed through a watch channel.
struct TestSource {
    rx: watch::Receiver<Arc<DesiredSet>>,
}

impl Source for TestSource {
    type Set = Arc<DesiredSet>;
    type Error = Infallible;
    fn serves(&self, type_url: &str) -> bool {
        type_url == "A"
    }
    fn desired(&mut self, _type_url: &str) -> Arc<DesiredSet> {
        self.rx.borrow_and_update().clone()
    }
    async fn changed(&mut self) -> Result<Vec<String>, Infallible> {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        Ok(vec!["A".to_string()])
    }
}

impl DesiredView for Arc<DesiredSet> {
    fn get_desired(&self, name: &str) -> Option<&Desired> {
        self.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_> {
        Box::new(self.iter())
    }
}

struct ChanWire<I, O> {
    rx: mpsc::Receiver<I>,
    tx: mpsc::Sender<O>,
}

impl SendWire for ChanWire<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    type Error = Infallible;
    async fn recv(&mut self) -> Result<Option<Incoming>, Infallible> {
        Ok(self.rx.recv().await.map(|request| Incoming { request, force: false }))
    }
    async fn send(&mut self, response: DeltaDiscoveryResponse, _full: Option<DesiredSet>) -> bool {
        self.tx.send(response).await.is_ok()
    }
}

impl RecvWire for ChanWire<DeltaDiscoveryResponse, DeltaDiscoveryRequest> {
    type Error = Infallible;
    async fn recv(&mut self) -> Result<Option<DeltaDiscoveryResponse>, Infallible> {
        Ok(self.rx.recv().await)
    }
    async fn send(&mut self, request: DeltaDiscoveryRequest) -> bool {
        self.tx.send(request).await.is_ok()
    }
}

/// Counts what the observer saw.
#[derive(Default, Clone)]
struct Seen(Arc<std::sync::Mutex<Vec<String>>>);

impl Seen {
    fn push(&self, s: String) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Observer for Seen {
    fn sent(&mut self, type_url: &str, response: &DeltaDiscoveryResponse, _: &SendStats) {
        self.push(format!("sent {type_url} {}", response.resources.len()));
    }
    fn acked(&mut self, type_url: &str, _: &str, change: Option<Duration>, _: &SendStats) {
        self.push(format!("acked {type_url} change={}", change.is_some()));
    }
    fn nacked(&mut self, type_url: &str, _: &str, reason: &str, _: &SendStats) {
        self.push(format!("nacked {type_url} {reason}"));
    }
    fn unserved(&mut self, type_url: &str) {
        self.push(format!("unserved {type_url}"));
    }
}

fn set(items: &[(&str, &str)]) -> Arc<DesiredSet> {
    Arc::new(
        items
            .iter()
            .map(|(n, v)| {
                let a = Any { type_url: "A".into(), value: v.as_bytes().to_vec() };
                (n.to_string(), Desired { version: any_version(&a), resource: a })
            })
            .collect(),
    )
}

fn req(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { type_url: type_url.into(), response_nonce: nonce.into(), ..Default::default() }
}

#[tokio::test]
async fn unserved_type_gets_an_empty_response_and_the_stream_stays_up() {
    let (set_tx, set_rx) = watch::channel(set(&[("a", "1")]));
    let (req_tx, req_rx) = mpsc::channel(8);
    let (resp_tx, mut resp_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let seen = Seen::default();
    let task = {
        let (cancel, mut seen) = (cancel.clone(), seen.clone());
        tokio::spawn(async move {
            let mut source = TestSource { rx: set_rx };
            let mut wire = ChanWire { rx: req_rx, tx: resp_tx };
            let config = SendConfig { nonce_prefix: "t".into(), max_bytes: 1 << 20, max_resource_bytes: None };
            send_loop(&mut source, &mut wire, &mut seen, &config, &cancel).await
        })
    };
    req_tx.send(req("CircuitBreaker", "")).await.expect("send");
    let r = resp_rx.recv().await.expect("empty response");
    assert_eq!(r.type_url, "CircuitBreaker");
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert!(!r.nonce.is_empty());
    req_tx.send(req("CircuitBreaker", &r.nonce)).await.expect("ack");
    // A served type afterwards still gets its resources.
    req_tx.send(req("A", "")).await.expect("send");
    let r = resp_rx.recv().await.expect("response");
    assert_eq!((r.type_url.as_str(), r.resources.len()), ("A", 1));
    req_tx.send(req("A", &r.nonce)).await.expect("ack");
    req_tx.send(req("C", "")).await.expect("send");
    assert_eq!(resp_rx.recv().await.expect("C").type_url, "C");
    // A change travels as a diff, and its ACK carries a change-to-ACK time.
    set_tx.send_replace(set(&[("a", "2"), ("b", "1")]));
    let r = resp_rx.recv().await.expect("change");
    assert_eq!(r.resources.len(), 2);
    req_tx.send(req("A", &r.nonce)).await.expect("ack");
    // Requests are handled in order: once B is answered, the ACK was seen.
    req_tx.send(req("B", "")).await.expect("send");
    assert_eq!(resp_rx.recv().await.expect("B").type_url, "B");
    cancel.cancel();
    assert!(matches!(task.await.expect("join"), Ended::Cancelled));
    assert_eq!(
        seen.all(),
        [
            "unserved CircuitBreaker",
            "sent CircuitBreaker 0",
            "acked CircuitBreaker change=false",
            "sent A 1",
            "acked A change=false",
            "unserved C",
            "sent C 0",
            "sent A 2",
            "acked A change=true",
            "unserved B",
            "sent B 0",
        ]
    );
}

#[tokio::test]
async fn an_ack_is_never_answered_and_the_peer_leaving_ends_the_loop() {
    let (_set_tx, set_rx) = watch::channel(set(&[("a", "1")]));
    let (req_tx, req_rx) = mpsc::channel(8);
    let (resp_tx, mut resp_rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        let mut source = TestSource { rx: set_rx };
        let mut wire = ChanWire { rx: req_rx, tx: resp_tx };
        let config = SendConfig { nonce_prefix: "t".into(), max_bytes: 1 << 20, max_resource_bytes: None };
        send_loop(&mut source, &mut wire, &mut (), &config, &CancellationToken::new()).await
    });
    req_tx.send(req("A", "")).await.expect("send");
    let r = resp_rx.recv().await.expect("response");
    req_tx.send(req("A", &r.nonce)).await.expect("ack");
    drop(req_tx);
    assert!(matches!(task.await.expect("join"), Ended::PeerClosed));
    assert!(resp_rx.recv().await.is_none(), "the ACK got no answer");
}

/// A persistent set whose full walks ([`DesiredView::entries`]) are counted.
#[derive(Clone)]
struct Counted {
    set: crate::delta::SharedSet,
    walks: Arc<std::sync::atomic::AtomicUsize>,
}

impl DesiredView for Counted {
    fn get_desired(&self, name: &str) -> Option<&Desired> {
        self.set.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_> {
        self.walks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(self.set.iter())
    }
}

/// Like [`TestSource`], over persistent sets that can tell which keys differ.
struct KeyedSource {
    rx: watch::Receiver<crate::delta::SharedSet>,
    walks: Arc<std::sync::atomic::AtomicUsize>,
}

impl Source for KeyedSource {
    type Set = Counted;
    type Error = Infallible;
    fn serves(&self, type_url: &str) -> bool {
        type_url == "A"
    }
    fn desired(&mut self, _type_url: &str) -> Counted {
        Counted { set: self.rx.borrow_and_update().clone(), walks: self.walks.clone() }
    }
    fn changed_keys(&self, old: &Counted, new: &Counted) -> Option<Vec<String>> {
        Some(crate::delta::shared_diff(&old.set, &new.set))
    }
    async fn changed(&mut self) -> Result<Vec<String>, Infallible> {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        Ok(vec!["A".to_string()])
    }
}

/// A change's cost follows the change: once the peer has the whole set,
/// neither a change nor the ACKs walk the whole set again (with many
/// resources and many peers, one walk per ACK per peer was most of the
/// global's CPU per update), and a subscription change still does.
#[tokio::test]
async fn acks_and_changes_cost_what_changed_not_the_whole_set() {
    let shared = |items: &[(&str, &str)]| -> crate::delta::SharedSet {
        set(items).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let names: Vec<String> = (0..500).map(|i| format!("r{i:03}")).collect();
    let items: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (set_tx, set_rx) = watch::channel(shared(&items));
    let walks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (req_tx, req_rx) = mpsc::channel(8);
    let (resp_tx, mut resp_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = {
        let (cancel, walks) = (cancel.clone(), walks.clone());
        tokio::spawn(async move {
            let mut source = KeyedSource { rx: set_rx, walks };
            let mut wire = ChanWire { rx: req_rx, tx: resp_tx };
            let config = SendConfig { nonce_prefix: "t".into(), max_bytes: 1 << 20, max_resource_bytes: None };
            send_loop(&mut source, &mut wire, &mut (), &config, &cancel).await
        })
    };
    let walked = || walks.load(std::sync::atomic::Ordering::Relaxed);
    req_tx.send(req("A", "")).await.expect("subscribe");
    let r = resp_rx.recv().await.expect("initial");
    assert_eq!(r.resources.len(), 500);
    let after_initial = walked();
    assert!(after_initial >= 1, "the first response diffs the whole set");
    req_tx.send(req("A", &r.nonce)).await.expect("ack");
    for v in 2..5 {
        let mut next = set_tx.borrow().clone();
        let one = shared(&[("r007", &v.to_string())]);
        next.extend(one);
        set_tx.send_replace(next);
        let r = resp_rx.recv().await.expect("change");
        let got: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(got, ["r007"], "only what changed travels");
        req_tx.send(req("A", &r.nonce)).await.expect("ack");
        req_tx.send(req("A", "stale-nonce")).await.expect("stale");
    }
    // Requests are handled in order: once this is answered, every ACK was.
    req_tx.send(req("B", "")).await.expect("send");
    assert_eq!(resp_rx.recv().await.expect("B").type_url, "B");
    assert_eq!(walked(), after_initial, "no ACK, stale nonce or change walked the whole set");
    // A subscription change (here: re-subscribing a name) still looks at everything.
    let resub = DeltaDiscoveryRequest {
        type_url: "A".into(),
        resource_names_subscribe: vec!["r001".into()],
        ..Default::default()
    };
    req_tx.send(resub).await.expect("resubscribe");
    let r = resp_rx.recv().await.expect("re-sent");
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["r001"]);
    assert!(walked() > after_initial);
    cancel.cancel();
    assert!(matches!(task.await.expect("join"), Ended::Cancelled));
}

/// Applies by recording names; NACKs names starting with `bad`.
struct Recorder;

impl Apply for Recorder {
    type Error = Infallible;
    async fn apply(
        &mut self,
        _type_url: &str,
        receiver: &mut DeltaReceiver,
        response: &DeltaDiscoveryResponse,
    ) -> Result<DeltaDiscoveryRequest, Infallible> {
        let (changes, _) = receiver.on_response(response);
        let bad: Vec<&str> =
            changes.upserts.iter().map(|(n, _, _)| n.as_str()).filter(|n| n.starts_with("bad")).collect();
        for (n, v, _) in &changes.upserts {
            receiver.applied(n, v);
        }
        Ok(if bad.is_empty() { receiver.ack(&changes.nonce) } else { receiver.nack(&changes.nonce, &bad.join(",")) })
    }
}

#[tokio::test]
async fn receiver_asks_acks_nacks_and_ignores_types_not_asked_for() {
    let (resp_tx, resp_rx) = mpsc::channel(8);
    let (req_tx, mut req_rx) = mpsc::channel(8);
    let seen = Seen::default();
    let task = {
        let mut seen = seen.clone();
        tokio::spawn(async move {
            let mut receivers: BTreeMap<String, DeltaReceiver> =
                [("A".to_string(), DeltaReceiver::new("A", BTreeMap::new()))].into_iter().collect();
            let mut wire = ChanWire { rx: resp_rx, tx: req_tx };
            receive_loop(&mut receivers, None, &mut wire, &mut Recorder, &mut seen, &CancellationToken::new()).await
        })
    };
    assert_eq!(req_rx.recv().await.expect("initial").type_url, "A");
    let resp = |ty: &str, nonce: &str, name: &str| DeltaDiscoveryResponse {
        type_url: ty.into(),
        nonce: nonce.into(),
        resources: vec![envoy_types::pb::envoy::service::discovery::v3::Resource {
            name: name.into(),
            version: "v".into(),
            resource: Some(Any::default()),
            ..Default::default()
        }],
        ..Default::default()
    };
    resp_tx.send(resp("Other", "n0", "x")).await.expect("send");
    resp_tx.send(resp("A", "n1", "ok")).await.expect("send");
    let ack = req_rx.recv().await.expect("ack");
    assert_eq!((ack.response_nonce.as_str(), ack.error_detail.is_none()), ("n1", true));
    resp_tx.send(resp("A", "n2", "bad-1")).await.expect("send");
    let nack = req_rx.recv().await.expect("nack");
    assert_eq!(nack.error_detail.map(|e| e.message), Some("bad-1".to_string()));
    drop(resp_tx);
    assert!(matches!(task.await.expect("join"), Ended::PeerClosed));
    assert_eq!(seen.all(), ["unserved Other", "sent A 1", "acked A change=false", "sent A 1", "nacked A bad-1"]);
}

/// A set that counts full scans (`entries`), for a source that can tell
/// the keys a change touched.
#[derive(Clone)]
struct ScanCounted {
    set: Arc<DesiredSet>,
    scans: Arc<std::sync::atomic::AtomicUsize>,
}

impl DesiredView for ScanCounted {
    fn get_desired(&self, name: &str) -> Option<&Desired> {
        self.set.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_> {
        self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(self.set.iter())
    }
}

/// [`TestSource`] with keyed diffs.
struct ScanKeyedSource {
    rx: watch::Receiver<Arc<DesiredSet>>,
    scans: Arc<std::sync::atomic::AtomicUsize>,
}

impl Source for ScanKeyedSource {
    type Set = ScanCounted;
    type Error = Infallible;
    fn serves(&self, type_url: &str) -> bool {
        type_url == "A"
    }
    fn desired(&mut self, _type_url: &str) -> ScanCounted {
        ScanCounted { set: self.rx.borrow_and_update().clone(), scans: self.scans.clone() }
    }
    fn changed_keys(&self, old: &ScanCounted, new: &ScanCounted) -> Option<Vec<String>> {
        let mut keys: Vec<String> = old.set.keys().chain(new.set.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| old.set.get(k).map(|d| &d.version) != new.set.get(k).map(|d| &d.version));
        Some(keys)
    }
    async fn changed(&mut self) -> Result<Vec<String>, Infallible> {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        Ok(vec!["A".to_string()])
    }
}

/// An ACK or NACK changes neither the subscription nor what the peer holds:
/// with a source that can tell the keys it changed, it costs those keys, not
/// a scan of the whole set (a burst of N writes, each ACKed, would otherwise
/// cost N scans of a growing set). A request that changes the subscription
/// still diffs everything; what changes still travels.
#[tokio::test]
async fn acks_cost_the_changed_keys_not_a_scan_of_the_set() {
    let (set_tx, set_rx) = watch::channel(set(&[("a", "1")]));
    let scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = || scans.load(std::sync::atomic::Ordering::Relaxed);
    let (req_tx, req_rx) = mpsc::channel(8);
    let (resp_tx, mut resp_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = {
        let (cancel, scans) = (cancel.clone(), scans.clone());
        tokio::spawn(async move {
            let mut source = ScanKeyedSource { rx: set_rx, scans };
            let mut wire = ChanWire { rx: req_rx, tx: resp_tx };
            let config = SendConfig { nonce_prefix: "t".into(), max_bytes: 1 << 20, max_resource_bytes: None };
            send_loop(&mut source, &mut wire, &mut (), &config, &cancel).await
        })
    };
    req_tx.send(req("A", "")).await.expect("subscribe");
    let r = resp_rx.recv().await.expect("initial");
    assert_eq!(r.resources.len(), 1);
    let after_initial = count();
    assert!(after_initial > 0, "the initial request diffs everything");
    for v in 2..10 {
        set_tx.send_replace(set(&[("a", "1"), ("b", &v.to_string())]));
        let r = resp_rx.recv().await.expect("change");
        assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
        req_tx.send(req("A", &r.nonce)).await.expect("ack");
    }
    // A NACK too.
    set_tx.send_replace(set(&[("a", "1"), ("b", "bad")]));
    let r = resp_rx.recv().await.expect("change");
    let nack = DeltaDiscoveryRequest {
        error_detail: Some(envoy_types::pb::google::rpc::Status { code: 3, message: "b: bad".into(), details: vec![] }),
        ..req("A", &r.nonce)
    };
    req_tx.send(nack).await.expect("nack");
    // A subscription change is answered after the ACKs and NACK (in order).
    req_tx
        .send(DeltaDiscoveryRequest { resource_names_subscribe: vec!["*".into()], ..req("A", "") })
        .await
        .expect("subscribe again");
    set_tx.send_replace(set(&[("a", "2"), ("b", "bad")]));
    let r = resp_rx.recv().await.expect("change after the subscription");
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
    // One full round (`next_response`, at most two scans: the entries and
    // the set's version) for the subscription change; none for the nine
    // ACKs and the NACK.
    let scans = count() - after_initial;
    assert!((1..=2).contains(&scans), "only the subscription change scanned the set: {scans} scans");
    cancel.cancel();
    assert!(matches!(task.await.expect("join"), Ended::Cancelled));
}

/// One response in flight per type: changes made while the peer has not
/// answered the last response go out together, in one response, with the
/// answer; a peer that does not answer gets them [`ACK_WAIT`] after the
/// send. (Before, a burst of N writes was N responses, each applied and
/// ACKed by the peer in turn: a global receiving a zone's registrations
/// fell seconds behind.) Time is paused: the runtime jumps to the next timer
/// only when every task is idle, so "nothing yet" is exact.
#[tokio::test(start_paused = true)]
async fn changes_wait_for_the_answer_to_the_response_in_flight() {
    let (set_tx, set_rx) = watch::channel(set(&[("a", "1")]));
    let (req_tx, req_rx) = mpsc::channel(8);
    let (resp_tx, mut resp_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut source = TestSource { rx: set_rx };
            let mut wire = ChanWire { rx: req_rx, tx: resp_tx };
            let config = SendConfig { nonce_prefix: "t".into(), max_bytes: 1 << 20, max_resource_bytes: None };
            send_loop(&mut source, &mut wire, &mut (), &config, &cancel).await
        })
    };
    req_tx.send(req("A", "")).await.expect("subscribe");
    let first = resp_rx.recv().await.expect("initial");
    for v in 2..7 {
        set_tx.send_replace(set(&[("a", "1"), ("b", &v.to_string())]));
        tokio::task::yield_now().await;
    }
    let early = tokio::time::timeout(ACK_WAIT / 2, resp_rx.recv()).await;
    assert!(early.is_err(), "a change went out before the response in flight was answered: {early:?}");
    req_tx.send(req("A", &first.nonce)).await.expect("ack");
    let burst = resp_rx.recv().await.expect("the held changes");
    let names: Vec<(&str, &[u8])> = burst
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.resource.as_ref().map_or(&[][..], |a| &a.value[..])))
        .collect();
    assert_eq!(names, [("b", &b"6"[..])], "one response with the latest state");
    // The peer does not answer this one: the next change waits ACK_WAIT, no more.
    let sent = tokio::time::Instant::now();
    set_tx.send_replace(set(&[("a", "1"), ("b", "7")]));
    let late = resp_rx.recv().await.expect("sent anyway");
    assert!(sent.elapsed() >= ACK_WAIT, "sent after {:?}", sent.elapsed());
    assert_eq!(late.resources.len(), 1);
    // Nothing else is pending.
    assert!(tokio::time::timeout(ACK_WAIT * 3, resp_rx.recv()).await.is_err());
    cancel.cancel();
    assert!(matches!(task.await.expect("join"), Ended::Cancelled));
}
