//! Group commit (issue 13): concurrent PUTs at a zone share SQLite
//! transactions. Every PUT is answered, and none before its write is
//! durable: a SIGKILL in the middle of a burst loses no acknowledged write.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use meridian_tests::{
    TestDir, Zone,
    json_api::{CONVERGE, eventually},
    resources,
};

/// Concurrent clients writing during the burst.
const CLIENTS: usize = 16;
/// Acknowledged writes to wait for before the kill.
const BEFORE_KILL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_sigkill_mid_burst() {
    let dir = TestDir::new("group-commit");
    let z = Zone::standalone(&dir, "gc").await;
    z.api().apply(&resources::mesh("default")).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (api, acked, count) = (z.api().clone(), acked.clone(), count.clone());
        clients.push(tokio::spawn(async move {
            // Until the zone dies (the request fails); bounded anyway.
            for i in (c..100_000).step_by(CLIENTS) {
                let name = format!("dp-{i}");
                let a = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                let dp = resources::dataplane(&name, &a, "svc");
                match api.try_put(&format!("/meshes/default/dataplanes/{name}"), &dp).await {
                    Ok((200 | 201, _)) => {
                        acked.lock().expect("lock").push(name);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => panic!("PUT {name} answered {status}: {body}"),
                    Err(_) => return,
                }
            }
        }));
    }
    eventually("the burst is under way", std::time::Duration::from_secs(60), || async {
        let n = count.load(Ordering::Relaxed);
        if n >= BEFORE_KILL { Ok(()) } else { Err(format!("{n} acknowledged")) }
    })
    .await;
    z.kill();
    for c in clients {
        c.await.expect("a client panicked: a PUT was answered with an error");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= BEFORE_KILL);

    z.restart().await;
    let listed = eventually("the restarted zone lists its Dataplanes", CONVERGE, || async {
        let v = z.api().fetch("/meshes/default/dataplanes?size=1").await?;
        Ok::<_, String>(v["total"].as_u64().unwrap_or(0))
    })
    .await;
    for name in &acked {
        let (status, body) =
            z.api().try_get(&format!("/meshes/default/dataplanes/{name}")).await.expect("GET after restart");
        assert_eq!(status, 200, "acknowledged {name} was lost by the SIGKILL: {body}");
    }
    // Unacknowledged PUTs in flight at the kill may or may not have landed.
    assert!(listed >= acked.len() as u64, "{listed} listed, {} acknowledged", acked.len());
}
