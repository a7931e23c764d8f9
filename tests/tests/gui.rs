//! The GUI at `/gui`, in a real headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol by [`meridian_tests::browser`]),
//! against a real global with two zones and a builtin gateway with a real
//! Envoy in each zone:
//!
//! - the pages load with no console error, warning or exception, and list
//!   the zones (online) and the gateway with the Dataplanes serving it;
//! - a MeshGatewayRoute applied at the global is shown ACKed by the gateway
//!   Dataplane of each zone, and a change to it reaches the open page by
//!   the live update alone (no reload);
//! - no Secret value appears on any page; a hostile label value and a
//!   hostile name in the URL are escaped (no element injected, nothing run);
//! - without the token under a non-loopback `Host`: 401 and the login form;
//!   the token (header, or the login form's cookie) opens the pages.
//!
//! Screenshots go to `target/gui-screenshots/*.png` (the path is printed).
//! Needs `chromium`, `envoy` and the workspace binaries (`cargo build
//! --workspace --bins`).

use meridian_tests::{
    Backend, GlobalSpec, Topology, WAIT, XdsMode,
    browser::{Browser, screenshot_dir},
    eventually, traffic,
};
use serde_json::Value;

/// A Secret value that must never reach a page, and its base64 (what the API stores).
const SECRET_VALUE: &str = "super-secret-gui-value";
const SECRET_B64: &str = "c3VwZXItc2VjcmV0LWd1aS12YWx1ZQ==";

/// A label value that runs script if a page ever inserts it unescaped.
const HOSTILE: &str = r#"<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"#;

/// The gateway with an HTTP listener on each port, and a Secret.
fn gateway(ports: &[u16]) -> String {
    let listeners: Vec<String> = ports.iter().map(|p| format!("{{port: {p}, protocol: HTTP}}")).collect();
    format!(
        r#"
type: MeshGateway
mesh: default
name: edge
labels: {{team: '{HOSTILE}'}}
selectors: [{{match: {{kuma.io/service: edge}}}}]
conf: {{listeners: [{listeners}]}}
---
type: Secret
mesh: default
name: edge-credentials
data: {SECRET_B64}
"#,
        listeners = listeners.join(", ")
    )
}

fn route(prefix: &str) -> String {
    format!(
        r#"
type: MeshGatewayRoute
mesh: default
name: edge-route
selectors: [{{match: {{kuma.io/service: edge}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: {prefix}}}}}]
      backends: [{{destination: {{kuma.io/service: demo}}}}]
"#
    )
}

/// `(zone, Dataplane)` of every propagation row showing `state`.
async fn rows_in_state(browser: &Browser, state: &str) -> Vec<(String, String)> {
    let js = format!(
        "Array.from(document.querySelectorAll('tr.dp-status[data-state=\"{state}\"]')).map(r => [r.dataset.zone, r.dataset.dataplane])"
    );
    let v = browser.eval(&js).await;
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| (r[0].as_str().unwrap_or_default().to_string(), r[1].as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The content version the open resource page shows.
async fn shown_version(browser: &Browser) -> String {
    browser
        .eval("(document.querySelector('main p code') || {}).textContent || ''")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_no_secret(page: &str, html: &str) {
    assert!(!html.contains(SECRET_VALUE) && !html.contains(SECRET_B64), "{page} shows Secret data:\n{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gui_shows_zones_gateways_and_live_propagation_in_chromium() {
    let mut topo = Topology::builder("gui")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .zone("zone-2")
        .http_backend("demo", "zone-1")
        .gateway("zone-1", "edge-gw-1", "edge")
        .start()
        .await;
    // The second zone's gateway listens on 127.0.0.2: the same listener
    // port as the first one's, on one machine.
    let gw2 = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "edge-gw-2",
        "networking": {"address": "127.0.0.2", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}});
    topo.zone("zone-2").api().apply(&gw2).await;
    topo.add_envoy("zone-2", "edge-gw-2", XdsMode::Delta).await;
    let global = topo.global();
    let port = traffic::free_port();
    global.api().apply_yaml(&gateway(&[port])).await;
    topo.envoy("edge-gw-1").wait_ready().await;
    topo.envoy("edge-gw-2").wait_ready().await;
    for zone in ["zone-1", "zone-2"] {
        global.api().wait_online(zone, true, WAIT).await;
    }
    let base = global.api_url().to_string();
    let shots = screenshot_dir();
    let browser = Browser::launch(topo.dir(), &[]).await;

    // Zones: both listed, online.
    assert_eq!(browser.goto(&format!("{base}/gui")).await, 200);
    let online = browser
        .eval("Array.from(document.querySelectorAll('div.zone[data-online=\"true\"]')).map(z => z.dataset.zone)")
        .await;
    assert_eq!(online, serde_json::json!(["zone-1", "zone-2"]), "{}", browser.text().await);
    let text = browser.text().await;
    assert!(text.contains("global instance") && text.contains("default"), "{text}");
    browser.screenshot(&shots.join("zones.png")).await;
    assert_no_secret("/gui", &browser.html().await);

    // The mesh: the gateway, its listener and the Dataplane of each zone
    // serving it; the Secret by name only; the hostile label as text.
    let gateway_dps = eventually("the mesh page lists both gateway Dataplanes under the gateway", WAIT, || async {
        browser.goto(&format!("{base}/gui/meshes/default")).await;
        let v = browser.eval("Array.from(document.querySelectorAll('tr.gateway[data-name=\"edge\"] td:nth-child(4) a')).map(a => a.textContent)").await;
        if v.as_array().is_some_and(|a| a.len() == 2) { Ok(v) } else { Err(v.to_string()) }
    })
    .await;
    assert_eq!(gateway_dps, serde_json::json!(["zone-1.edge-gw-1", "zone-2.edge-gw-2"]));
    let text = browser.text().await;
    assert!(text.contains("HTTP :") && text.contains("edge-credentials"), "{text}");
    assert!(text.contains(HOSTILE), "the hostile label shows as text: {text}");
    let injected =
        browser.eval("document.querySelectorAll('main img, main script').length + (window.__xss || 0)").await;
    assert_eq!(injected, 0, "a label value became markup");
    assert_no_secret("/gui/meshes/default", &browser.html().await);
    browser.screenshot(&shots.join("mesh.png")).await;

    // The Secret's own page: its name and YAML, never its data.
    assert_eq!(browser.goto(&format!("{base}/gui/meshes/default/secrets/edge-credentials")).await, 200);
    let html = browser.html().await;
    assert!(html.contains("edge-credentials") && html.contains("not shown"), "{html}");
    assert_no_secret("the Secret's page", &html);

    // A route applied at the global: ACKed by the gateway of each zone.
    global.api().apply_yaml(&route("/shop")).await;
    browser.goto(&format!("{base}/gui/meshes/default/meshgatewayroutes/edge-route")).await;
    let expected = vec![
        ("zone-1".to_string(), "zone-1.edge-gw-1".to_string()),
        ("zone-2".to_string(), "zone-2.edge-gw-2".to_string()),
    ];
    eventually("the route page shows it ACKed by the gateway in each zone", WAIT, || async {
        let acked = rows_in_state(&browser, "ACKed").await;
        if acked == expected { Ok(()) } else { Err(format!("{acked:?}; page: {}", browser.text().await)) }
    })
    .await;
    let text = browser.text().await;
    assert!(!text.contains("no …/_status for this resource"), "the page reads the global's …/_status: {text}");
    browser.screenshot(&shots.join("route-acked.png")).await;

    // A change while the page stays open: the live update alone (the
    // marker set in this document survives) shows the new version ACKed.
    let before = shown_version(&browser).await;
    browser.eval("window.__notReloaded = true").await;
    global.api().apply_yaml(&route("/store")).await;
    eventually("the open page shows the changed route ACKed in each zone", WAIT, || async {
        let version = shown_version(&browser).await;
        let acked = rows_in_state(&browser, "ACKed").await;
        if version != before && acked == expected {
            Ok(())
        } else {
            Err(format!("version {version} (was {before}), ACKed {acked:?}"))
        }
    })
    .await;
    assert_eq!(browser.eval("window.__notReloaded === true").await, Value::Bool(true), "the page was reloaded");
    let live = browser.eval("document.getElementById('live-state').textContent").await;
    assert!(live.as_str().is_some_and(|s| s.starts_with("live")), "{live}");
    browser.screenshot(&shots.join("route-live-update.png")).await;

    // The gateway Dataplane's page: a meridianctl command where an action would go.
    browser.goto(&format!("{base}/gui/meshes/default/dataplanes/zone-1.edge-gw-1")).await;
    let text = browser.text().await;
    assert!(text.contains("meridianctl generate dataplane-token --mesh default"), "{text}");
    // Its own last ACK/NACK (a Dataplane is not sent to zones: no `_status`).
    let own = eventually("the Dataplane's page shows its proxy ACKed", WAIT, || async {
        let acked = rows_in_state(&browser, "ACKed").await;
        if acked == expected[..1] { Ok(acked) } else { Err(format!("{acked:?}: {}", browser.text().await)) }
    })
    .await;
    assert_eq!(own.len(), 1);
    let zones = browser.eval("Array.from(document.querySelectorAll('div.zone-status')).map(z => z.dataset.zone)").await;
    assert_eq!(zones, serde_json::json!(["zone-1"]), "a Dataplane concerns its own zone only");
    assert!(
        browser.text().await.contains("delete dataplanes edge-gw-1 -m default   # at the zone"),
        "{}",
        browser.text().await
    );
    browser.screenshot(&shots.join("gateway-dataplane.png")).await;
    assert_no_secret("the Dataplane's page", &browser.html().await);

    // Its Envoy config, reached from the MeshGateway's page: the listener
    // and the applied route, as Envoy holds them (asked through the zone,
    // now that the Dataplane says where its Envoy's admin listens).
    let admin_port: u16 =
        topo.envoy("edge-gw-1").admin().rsplit(':').next().and_then(|p| p.parse().ok()).expect("admin port");
    let gw1 = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "edge-gw-1",
        "networking": {"address": "127.0.0.1", "admin": {"port": admin_port},
                       "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}});
    topo.zone("zone-1").api().apply(&gw1).await;
    browser.goto(&format!("{base}/gui/meshes/default/meshgateways/edge")).await;
    let link = eventually("the gateway page links the Dataplane of zone-1", WAIT, || async {
        let href = browser
            .eval("(document.querySelector('tr.dp-status[data-dataplane=\"zone-1.edge-gw-1\"] a.dataplane') || {}).href || ''")
            .await;
        match href.as_str() {
            Some(h) if !h.is_empty() => Ok(h.to_string()),
            _ => Err(browser.text().await),
        }
    })
    .await;
    assert_eq!(link, format!("{base}/gui/meshes/default/dataplanes/zone-1.edge-gw-1"));
    let listener = format!(":{port}");
    eventually("the Dataplane's page shows its Envoy's listener and the applied route", WAIT, || async {
        browser.goto(&link).await;
        let listeners =
            browser.eval("Array.from(document.querySelectorAll('#envoy li.listener')).map(l => l.textContent)").await;
        let routes =
            browser.eval("Array.from(document.querySelectorAll('#envoy li.route')).map(l => l.textContent)").await;
        let has = |v: &Value, needle: &str| {
            v.as_array().is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|t| t.contains(needle))))
        };
        if has(&listeners, &listener) && has(&routes, "prefix /store") {
            Ok(())
        } else {
            Err(format!("listeners {listeners}, routes {routes}: {}", browser.text().await))
        }
    })
    .await;
    let raw = browser.eval("document.querySelector('#envoy details#envoy-raw pre').textContent").await;
    assert!(raw.as_str().is_some_and(|r| r.contains("ListenersConfigDump")), "the raw config dump: {raw}");
    let html = browser.html().await;
    assert!(!html.contains("PRIVATE KEY"), "a private key reached the page");
    assert_no_secret("the Dataplane's Envoy config", &html);
    browser.screenshot(&shots.join("gateway-dataplane-envoy.png")).await;

    // zone-2's gateway does not say where its admin listens (nothing at
    // 127.0.0.2:9901): the page says Envoy's admin did not answer.
    browser.goto(&format!("{base}/gui/meshes/default/dataplanes/zone-2.edge-gw-2")).await;
    let error = browser.eval("(document.querySelector('#envoy .envoy-error') || {}).textContent || ''").await;
    assert!(error.as_str().is_some_and(|e| e.contains("did not answer")), "{error}: {}", browser.text().await);

    // A listener zone-1's Envoy cannot bind (another process holds
    // 127.0.0.1:<port>; zone-2's gateway binds 127.0.0.2): the gateway's
    // page shows zone-1's Dataplane NACKed with Envoy's reason, zone-2's ACKed.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a port for Envoy to find taken");
    let taken = squatter.local_addr().expect("the taken port").port();
    global.api().apply_yaml(&gateway(&[port, taken])).await;
    browser.goto(&format!("{base}/gui/meshes/default/meshgateways/edge")).await;
    let reason = eventually("the gateway page shows zone-1 NACKed and zone-2 ACKed", WAIT, || async {
        let nacked = rows_in_state(&browser, "NACKed").await;
        let acked = rows_in_state(&browser, "ACKed").await;
        let reason = browser
            .eval("(document.querySelector('tr.dp-status[data-state=\"NACKed\"] td.reason') || {}).textContent || ''")
            .await;
        let reason = reason.as_str().unwrap_or_default().to_string();
        if nacked == expected[..1] && acked == expected[1..] && !reason.is_empty() {
            Ok(reason)
        } else {
            Err(format!("NACKed {nacked:?}, ACKed {acked:?}, reason {reason:?}"))
        }
    })
    .await;
    assert!(reason.contains(&taken.to_string()), "Envoy's reason names the port: {reason}");
    let zone_states =
        browser.eval("Array.from(document.querySelectorAll('div.zone-status')).map(z => z.dataset.state)").await;
    assert_eq!(zone_states, serde_json::json!(["Rejected", "Applied"]));
    browser.screenshot(&shots.join("gateway-nacked.png")).await;
    drop(squatter);

    // A Zone's page (linked from the zones list): its YAML, nothing to propagate.
    assert_eq!(browser.goto(&format!("{base}/gui/zones/zone-1")).await, 200);
    assert!(browser.text().await.contains("stays at the global"), "{}", browser.text().await);

    // A gateway Dataplane with no Envoy connected and no admin to ask: the
    // zone cannot inspect it, and its page shows the inspect route's 502
    // and the zone's reason.
    let lonely = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "lonely-gw",
        "networking": {"address": "127.0.0.2", "admin": {"port": 1},
                       "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "lonely"}}}});
    topo.zone("zone-2").api().apply(&lonely).await;
    global.api().wait_for("/meshes/default/dataplanes/zone-2.lonely-gw", "synced from zone-2", |_| true).await;
    assert_eq!(browser.goto(&format!("{base}/gui/meshes/default/dataplanes/zone-2.lonely-gw")).await, 200);
    let error = browser.eval("(document.querySelector('#envoy .envoy-error') || {}).textContent || ''").await;
    let error = error.as_str().unwrap_or_default().to_string();
    assert!(error.contains("502 Zone could not inspect") && error.contains("lonely-gw"), "{error}");
    browser.screenshot(&shots.join("gateway-dataplane-unreachable.png")).await;

    let problems = browser.console_problems();
    assert!(problems.is_empty(), "console errors, warnings or exceptions: {problems:#?}");

    // A hostile name in the URL: shown as text on the 404 page, never run.
    browser.clear_events();
    let status = browser
        .goto(&format!("{base}/gui/meshes/default/meshgateways/%3Cscript%3Ewindow.__xss=3%3C%2Fscript%3E"))
        .await;
    assert_eq!(status, 404);
    assert!(browser.text().await.contains("<script>window.__xss=3</script>"), "{}", browser.text().await);
    assert_eq!(browser.eval("document.querySelectorAll('main script').length + (window.__xss || 0)").await, 0);
    println!("GUI screenshots: {}", shots.display());
    topo.cleanup().await;
}

/// A CA-signed certificate for `localhost`/127.0.0.1 in `dir`: (cert, key, CA) paths.
fn api_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("parameters")
        .signed_by(&key, &ca)
        .expect("certificate");
    let (cert_path, key_path, ca_path) = (dir.join("api.pem"), dir.join("api.key"), dir.join("ca.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
    std::fs::write(&ca_path, ca.pem()).expect("write the CA");
    (cert_path, key_path, ca_path)
}

/// Raw HTTP from loopback under a foreign `Host` (DNS rebinding): 401 and
/// the login form, nothing listed; the token header opens every page; a
/// wrong token is refused even under a loopback `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gui_needs_the_admin_token_under_a_non_loopback_host() {
    let topo = Topology::builder("gui-auth").global(Backend::Sqlite).mesh("default").start().await;
    let global = topo.global();
    let secret = serde_json::json!({"type": "Secret", "mesh": "default", "name": "s1", "data": SECRET_B64});
    global.api().apply(&secret).await;
    let announced = format!("meridian-global: GUI on {}/gui", global.api_url());
    assert!(
        global.process().stdout().contains(&announced),
        "the global prints its GUI's URL: {}",
        global.process().stdout()
    );
    for path in ["/gui", "/gui/meshes/default", "/gui/meshes/default/secrets/s1", "/gui/meshes/default?fragment=main"] {
        let r = global.http().request(reqwest::Method::GET, path, None, &[("Host", "evil.example")]).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text);
        assert!(r.text.contains("name=\"token\"") && !r.text.contains("s1"), "{path}: {}", r.text);
        let r = global.admin_http().request(reqwest::Method::GET, path, None, &[("Host", "evil.example")]).await;
        assert_eq!(r.status, 200, "{path} with the token: {}", r.text);
        assert_no_secret(path, &r.text);
        let wrong = global.http().with_token(Some("wrong")).request(reqwest::Method::GET, path, None, &[]).await;
        assert_eq!(wrong.status, 401, "{path}: a wrong token is refused even from loopback");
    }
    topo.cleanup().await;
}

/// Behind the API's TLS, in Chromium: a browser that names the global
/// `gui.example` gets the login form; a wrong token is refused; the right
/// one is kept in a cookie that opens the pages; under 127.0.0.1 (loopback
/// trust) no token is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gui_signs_in_with_the_token_over_https_in_chromium() {
    let certs = tempfile::tempdir().expect("a directory for the certificate");
    let (cert, key, ca) = api_certificate(certs.path());
    let topo = Topology::builder("gui-tls")
        .global_spec(GlobalSpec { api_tls: Some((cert, key)), default_mesh: true, ..GlobalSpec::on(Backend::Sqlite) })
        .start()
        .await;
    let global = topo.global();
    assert!(global.api_url().starts_with("https://"), "{}", global.api_url());
    let ca = ca.to_string_lossy().to_string();
    let secret = format!("type: Secret\nmesh: default\nname: s1\ndata: {SECRET_B64}\n");
    global.ctl().args(["--ca-cert", &ca, "apply", "-f", "-"]).run_stdin(&secret).await.ok();
    // The certificate names localhost, not gui.example: Chromium is told to
    // accept it (trusting a private CA needs an NSS database).
    let browser = Browser::launch(
        topo.dir(),
        &["--host-resolver-rules=MAP gui.example 127.0.0.1", "--ignore-certificate-errors"],
    )
    .await;
    let port = global.api_addr().port();
    let url = format!("https://gui.example:{port}/gui/meshes/default");
    assert_eq!(browser.goto(&url).await, 401);
    assert!(browser.text().await.contains("needs the admin token"), "{}", browser.text().await);
    let submit = |token: &str| {
        format!(
            "document.getElementById('token').value = {}; document.querySelector('form').submit(); true",
            serde_json::json!(token)
        )
    };
    browser.eval(&submit("wrong")).await;
    eventually("the wrong token is refused", WAIT, || async {
        let t = browser.text().await;
        if t.contains("not valid") { Ok(()) } else { Err(t) }
    })
    .await;
    browser.eval(&submit(global.admin_token())).await;
    eventually("the token opens the GUI", WAIT, || async {
        let t = browser.text().await;
        if t.contains("Zones (0)") { Ok(()) } else { Err(t) }
    })
    .await;
    assert_eq!(browser.goto(&url).await, 200, "the cookie keeps the browser signed in");
    let cookies = browser.call("Network.getCookies", serde_json::json!({ "urls": [url.clone()] })).await;
    let cookie = cookies["cookies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "meridian-token"))
        .cloned()
        .unwrap_or_else(|| panic!("no token cookie: {cookies}"));
    assert_eq!(
        (&cookie["httpOnly"], &cookie["secure"], &cookie["sameSite"], &cookie["path"]),
        (&Value::Bool(true), &Value::Bool(true), &serde_json::json!("Strict"), &serde_json::json!("/gui")),
        "{cookie}"
    );
    let text = browser.text().await;
    assert!(text.contains("s1"), "{text}");
    assert_no_secret("the mesh page", &browser.html().await);
    browser.screenshot(&screenshot_dir().join("login-https.png")).await;
    // Loopback under a loopback name: trusted without a token (no cookie for this host).
    assert_eq!(browser.goto(&format!("https://127.0.0.1:{port}/gui")).await, 200);
    topo.cleanup().await;
}
