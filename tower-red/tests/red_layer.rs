//! `RedLayer`: OpenTelemetry HTTP metrics with bounded labels.

use std::convert::Infallible;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_red::http::RouteTemplate;
use tower_red::parts::RequestParts;
use tower_red::{BoxError, RedLayer, Rejection, RejectionKind, names};

type Series = Vec<(String, Vec<(String, String)>, DebugValue)>;

fn series(recorder: &DebuggingRecorder) -> Series {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let mut labels: Vec<_> = k
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            (k.key().name().to_string(), labels, v)
        })
        .collect()
}

fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn count(series: &Series, name: &str, labels: &[(String, String)]) -> usize {
    series
        .iter()
        .filter(|(n, ls, _)| n == name && ls == labels)
        .map(|(_, _, v)| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum()
}

async fn app(req: http::Request<()>) -> Result<http::Response<()>, BoxError> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    match req.uri().path() {
        "/fail" => Ok(http::Response::builder().status(500).body(()).unwrap()),
        "/busy" => Err(Rejection::new(RejectionKind::BulkheadFull).into()),
        "/boom" => Err("boom".into()),
        _ => Ok(http::Response::new(())),
    }
}

fn request(method: &str, path: &str, route: Option<&'static str>) -> http::Request<()> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    if let Some(route) = route {
        req.extensions_mut().insert(RouteTemplate(route));
    }
    req
}

#[tokio::test(start_paused = true)]
async fn server_metrics_follow_the_otel_conventions() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut svc = RedLayer::server().layer(service_fn(app));

    for (method, path, route) in [
        ("GET", "/users/7", Some("/users/{id}")),
        ("GET", "/users/8", Some("/users/{id}")),
        ("POST", "/fail", None),
        ("BREW", "/coffee", None),
        ("GET", "/busy", None),
        ("GET", "/boom", None),
    ] {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(request(method, path, route))
            .await;
    }

    let s = series(&recorder);
    let name = names::HTTP_SERVER_REQUEST_DURATION_SECONDS;
    let users = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("http_route", "/users/{id}"),
    ]);
    assert_eq!(count(&s, name, &users), 2, "{s:#?}");
    let fail = l(&[
        ("http_request_method", "POST"),
        ("http_response_status_code", "500"),
        ("error_type", "500"),
    ]);
    assert_eq!(count(&s, name, &fail), 1);
    let brew = l(&[
        ("http_request_method", "_OTHER"),
        ("http_response_status_code", "200"),
    ]);
    assert_eq!(count(&s, name, &brew), 1);
    assert_eq!(
        count(
            &s,
            name,
            &l(&[
                ("http_request_method", "GET"),
                ("error_type", "bulkhead_full")
            ])
        ),
        1
    );
    assert_eq!(
        count(
            &s,
            name,
            &l(&[("http_request_method", "GET"), ("error_type", "_OTHER")])
        ),
        1
    );
    // No raw path ever becomes a label.
    assert!(s.iter().all(|(_, ls, _)| {
        ls.iter()
            .all(|(_, v)| !v.contains("/users/7") && v != "/coffee")
    }));
    // Durations are in seconds and include the handler's 30 ms.
    let durations: Vec<f64> = s
        .iter()
        .filter(|(n, ls, _)| n == name && *ls == users)
        .flat_map(|(_, _, v)| match v {
            DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).collect(),
            _ => vec![],
        })
        .collect();
    assert!(
        durations.iter().all(|d| (0.03..0.031).contains(d)),
        "{durations:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn active_requests_gauge_returns_to_zero_even_when_futures_are_dropped() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut svc = RedLayer::server().layer(service_fn(app));
    let fut = svc.ready().await.unwrap().call(request("GET", "/", None));
    let active = |s: &Series| {
        s.iter()
            .find(|(n, ls, _)| {
                n == names::HTTP_SERVER_ACTIVE_REQUESTS
                    && *ls == l(&[("http_request_method", "GET")])
            })
            .and_then(|(_, _, v)| match v {
                DebugValue::Gauge(g) => Some(g.into_inner()),
                _ => None,
            })
    };
    // The debugging recorder drains gauges on every snapshot, so each read is a delta.
    assert_eq!(active(&series(&recorder)), Some(1.0));
    drop(fut);
    assert_eq!(active(&series(&recorder)), Some(-1.0));
    // A finished request also gives its place back.
    svc.ready()
        .await
        .unwrap()
        .call(request("GET", "/", None))
        .await
        .unwrap();
    assert_eq!(active(&series(&recorder)), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn route_labels_are_capped() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut svc = RedLayer::server().max_routes(1).layer(service_fn(app));
    for route in ["/a", "/b", "/c"] {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(request("GET", route, Some(route)))
            .await;
    }
    let s = series(&recorder);
    let name = names::HTTP_SERVER_REQUEST_DURATION_SECONDS;
    let base = [
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(
        count(&s, name, &l(&[base[0], base[1], ("http_route", "/a")])),
        1
    );
    assert_eq!(
        count(&s, name, &l(&[base[0], base[1], ("http_route", "_OTHER")])),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn client_metrics_name_the_server_and_count_4xx_as_errors() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut svc = RedLayer::client().layer(service_fn(|req: http::Request<()>| async move {
        let status = if req.uri().path() == "/missing" {
            404
        } else {
            200
        };
        Ok::<_, Infallible>(http::Response::builder().status(status).body(()).unwrap())
    }));
    for uri in [
        "http://api.internal:8080/x",
        "http://api.internal:8080/missing",
        "https://other/",
    ] {
        let req = http::Request::get(uri).body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let s = series(&recorder);
    let name = names::HTTP_CLIENT_REQUEST_DURATION_SECONDS;
    let ok = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("server_address", "api.internal"),
        ("server_port", "8080"),
    ]);
    assert_eq!(count(&s, name, &ok), 1, "{s:#?}");
    let missing = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "404"),
        ("error_type", "404"),
        ("server_address", "api.internal"),
        ("server_port", "8080"),
    ]);
    assert_eq!(count(&s, name, &missing), 1);
    let https = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("server_address", "other"),
        ("server_port", "443"),
    ]);
    assert_eq!(count(&s, name, &https), 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_turned_into_responses_keep_their_kind_as_error_type() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let svc = tower::ServiceBuilder::new()
        .layer(RedLayer::server())
        .layer(tower_red::problem::ProblemLayer::new())
        .service(service_fn(app));
    let res = svc.oneshot(request("GET", "/busy", None)).await.unwrap();
    assert_eq!(res.status(), 503);
    let s = series(&recorder);
    let labels = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "503"),
        ("error_type", "bulkhead_full"),
    ]);
    assert_eq!(
        count(&s, names::HTTP_SERVER_REQUEST_DURATION_SECONDS, &labels),
        1,
        "{s:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_layer_built_without_a_recorder_passes_calls_straight_through() {
    let mut svc = RedLayer::server().layer(service_fn(app));
    // A recorder installed after the layer was built sees nothing of it: handles bind at build.
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("GET", "/", Some("/")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(series(&recorder).is_empty());
}

#[tokio::test(start_paused = true)]
async fn layers_on_one_thread_keep_their_own_route_ids() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut a = RedLayer::server().max_routes(1).layer(service_fn(app));
    let mut b = RedLayer::server().max_routes(1).layer(service_fn(app));
    let call = |svc: &mut tower_red::http::Red<_>, route: &'static str| {
        let fut = svc.call(request("GET", route, Some(route)));
        async move { fut.await.unwrap() }
    };
    call(&mut a, "/x").await;
    call(&mut b, "/y").await;
    // `/x` is cached for `a` on this thread; for `b` it is past the cap.
    call(&mut b, "/x").await;
    let s = series(&recorder);
    let name = names::HTTP_SERVER_REQUEST_DURATION_SECONDS;
    let base = [
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(
        count(&s, name, &l(&[base[0], base[1], ("http_route", "/x")])),
        1,
        "{s:#?}"
    );
    assert_eq!(
        count(&s, name, &l(&[base[0], base[1], ("http_route", "/y")])),
        1,
        "{s:#?}"
    );
    assert_eq!(
        count(&s, name, &l(&[base[0], base[1], ("http_route", "_OTHER")])),
        1,
        "{s:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_remembered_client_target_never_answers_for_another_layer_scheme_or_authority() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let ok = |_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::builder().status(200).body(()).unwrap())
    };
    // `b` can name one host only: whatever `a` remembered, `b` must resolve on its own.
    let mut a = RedLayer::client().layer(service_fn(ok));
    let mut b = RedLayer::client().max_routes(1).layer(service_fn(ok));
    for (which, uri) in [
        ('a', "http://other/x"),
        ('a', "http://other/y"),           // the same target: remembered
        ('a', "https://other/x"),          // same authority, another scheme: another port
        ('b', "https://other/x"),          // same target, another layer
        ('b', "http://api.internal:81/x"), // past `b`'s cap
        ('a', "http://api.internal:81/x"),
        ('a', "http://api.internal:8/x"), // a prefix of the last authority
    ] {
        let svc = if which == 'a' { &mut a } else { &mut b };
        let req = http::Request::get(uri).body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let s = series(&recorder);
    let name = names::HTTP_CLIENT_REQUEST_DURATION_SECONDS;
    let target = |address: &'static str, port: &'static str| {
        l(&[
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("server_address", address),
            ("server_port", port),
        ])
    };
    // Both layers write the same series names: the counts add up over `a` and `b`.
    assert_eq!(count(&s, name, &target("other", "80")), 2, "{s:#?}");
    assert_eq!(count(&s, name, &target("other", "443")), 2, "{s:#?}");
    // Past the cap: `_OTHER`, with no port (the port is capped with its host).
    let past_the_cap = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("server_address", "_OTHER"),
    ]);
    assert_eq!(count(&s, name, &past_the_cap), 1, "{s:#?}");
    assert_eq!(count(&s, name, &target("api.internal", "81")), 1, "{s:#?}");
    assert_eq!(count(&s, name, &target("api.internal", "8")), 1, "{s:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_s_ports_and_odd_statuses_grow_no_series_past_the_cap() {
    // A client that calls URLs from its users (webhooks, link previews) sees any port, and a
    // server may answer any status from 100 to 999: neither may grow the series without bound.
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let answer = status.clone();
    let mut svc =
        RedLayer::client()
            .max_routes(2)
            .layer(service_fn(move |_req: http::Request<()>| {
                let code = answer.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    Ok::<_, Infallible>(http::Response::builder().status(code).body(()).unwrap())
                }
            }));
    for port in 1..=300u16 {
        let req = http::Request::get(format!("http://evil.example:{port}/"))
            .body(())
            .unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    for code in 600..=999u16 {
        status.store(code, std::sync::atomic::Ordering::Relaxed);
        let req = http::Request::get("http://evil.example:1/")
            .body(())
            .unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let s = series(&recorder);
    let durations: Vec<_> = s
        .iter()
        .filter(|(name, ..)| name == names::HTTP_CLIENT_REQUEST_DURATION_SECONDS)
        .collect();
    // Two host-and-port targets by name, the rest `_OTHER` (with no port); 200 and one bucket
    // for every status past 599.
    assert!(
        durations.len() <= 2 * 3 + 2,
        "{} series: {durations:#?}",
        durations.len()
    );
    let other = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("server_address", "_OTHER"),
    ]);
    assert_eq!(
        count(&s, names::HTTP_CLIENT_REQUEST_DURATION_SECONDS, &other),
        298,
        "{s:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_remembered_route_never_answers_for_another_layer() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // One route each: whatever the other layer interned last, each must resolve on its own.
    let mut a = RedLayer::server().max_routes(1).layer(service_fn(app));
    let mut b = RedLayer::server().max_routes(1).layer(service_fn(app));
    for (which, route) in [
        ('a', "/x"),
        ('b', "/y"),
        ('a', "/x"),
        ('b', "/x"), // `a` interned `/x` last: `b` is past its cap
        ('a', "/x"), // remembered
        ('a', "/y"), // past `a`'s cap
    ] {
        let svc = if which == 'a' { &mut a } else { &mut b };
        svc.call(request("GET", route, Some(route))).await.unwrap();
    }
    let s = series(&recorder);
    let name = names::HTTP_SERVER_REQUEST_DURATION_SECONDS;
    let route = |r| {
        l(&[
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", r),
        ])
    };
    assert_eq!(count(&s, name, &route("/x")), 3, "{s:#?}");
    assert_eq!(count(&s, name, &route("/y")), 1, "{s:#?}");
    assert_eq!(count(&s, name, &route("_OTHER")), 2, "{s:#?}");
}

/// A client request type of its own, as a crate other than `http` defines one: it names its
/// host and port, counts how often it is asked for them, and names a target only when told to.
struct Outbound {
    method: http::Method,
    headers: http::HeaderMap,
    host: &'static str,
    port: u16,
    target: Option<&'static str>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Outbound {
    fn new(
        host: &'static str,
        port: u16,
        target: Option<&'static str>,
        asked: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Outbound {
        Outbound {
            method: http::Method::GET,
            headers: http::HeaderMap::new(),
            host,
            port,
            target,
            asked: asked.clone(),
        }
    }
}

impl RequestParts for Outbound {
    fn method(&self) -> &http::Method {
        &self.method
    }
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        &mut self.headers
    }
    fn extensions(&self) -> Option<&http::Extensions> {
        None
    }
    fn extensions_mut(&mut self) -> Option<&mut http::Extensions> {
        None
    }
    fn host_port(&self) -> Option<(&str, u16)> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((self.host, self.port))
    }
    fn target(&self) -> Option<(&str, &str)> {
        self.target.map(|authority| ("http", authority))
    }
}

/// The same request through a type that keeps `RequestParts::target`'s default (no target),
/// as reqwest's implementation does.
struct Untargeted(Outbound);

impl RequestParts for Untargeted {
    fn method(&self) -> &http::Method {
        self.0.method()
    }
    fn headers(&self) -> &http::HeaderMap {
        self.0.headers()
    }
    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        self.0.headers_mut()
    }
    fn extensions(&self) -> Option<&http::Extensions> {
        None
    }
    fn extensions_mut(&mut self) -> Option<&mut http::Extensions> {
        None
    }
    fn host_port(&self) -> Option<(&str, u16)> {
        self.0.host_port()
    }
}

fn client_series(address: &'static str, port: &'static str) -> Vec<(String, String)> {
    l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("server_address", address),
        ("server_port", port),
    ])
}

/// Client duration samples for `a.internal:81` and for `b.internal:82`.
fn samples_by_target(recorder: &DebuggingRecorder) -> (usize, usize) {
    let s = series(recorder);
    let name = names::HTTP_CLIENT_REQUEST_DURATION_SECONDS;
    (
        count(&s, name, &client_series("a.internal", "81")),
        count(&s, name, &client_series("b.internal", "82")),
    )
}

#[tokio::test(start_paused = true)]
async fn a_request_type_without_a_target_names_each_request_s_own_server() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut svc = RedLayer::client().layer(service_fn(|_req: Untargeted| async {
        Ok::<_, Infallible>(http::Response::new(()))
    }));
    let asked = Default::default();
    for (host, port) in [("a.internal", 81), ("b.internal", 82), ("b.internal", 82)] {
        let req = Untargeted(Outbound::new(host, port, None, &asked));
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    assert_eq!(samples_by_target(&recorder), (1, 2));
    // No target, no memo: every request is asked.
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn a_client_asks_a_request_for_its_host_only_when_the_target_changes() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut svc = RedLayer::client().layer(service_fn(|_req: Outbound| async {
        Ok::<_, Infallible>(http::Response::new(()))
    }));
    let asked = Default::default();
    for (host, port, target) in [
        ("a.internal", 81, "a.internal:81"),
        ("a.internal", 81, "a.internal:81"),
        ("a.internal", 81, "a.internal:81"),
        ("b.internal", 82, "b.internal:82"),
    ] {
        let req = Outbound::new(host, port, Some(target), &asked);
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(samples_by_target(&recorder), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_thread_caching_more_layers_than_it_keeps_starts_over_and_loses_no_sample() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // More layers than one thread caches (64).
    let mut layers: Vec<_> = (0..70)
        .map(|_| RedLayer::server().layer(service_fn(app)))
        .collect();
    for svc in &mut layers[..64] {
        svc.call(request("GET", "/r", Some("/r"))).await.unwrap();
    }
    // The 65th layer's call starts the cache over (its route is interned when it is called)
    // while the 64th layer's series is the one this thread recorded into last; that layer's
    // next sample must not find it where it was.
    let pending = layers[64].call(request("GET", "/r", Some("/r")));
    layers[63]
        .call(request("GET", "/r", Some("/r")))
        .await
        .unwrap();
    pending.await.unwrap();
    for svc in &mut layers[65..] {
        svc.call(request("GET", "/r", Some("/r"))).await.unwrap();
    }
    for svc in &mut layers {
        svc.call(request("GET", "/r", Some("/r"))).await.unwrap();
    }
    let s = series(&recorder);
    let name = names::HTTP_SERVER_REQUEST_DURATION_SECONDS;
    let route = l(&[
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("http_route", "/r"),
    ]);
    assert_eq!(count(&s, name, &route), 64 + 2 + 5 + 70, "{s:#?}");
}
