//! Services: TTL registration, balancers, passive health, retries and the path resolver,
//! through a running gateway with real upstreams on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// `PUT /registry/services/{service}/instances/{id}` with a JSON body.
pub async fn register(
    admin: SocketAddr,
    service: &str,
    id: &str,
    body: &str,
) -> (StatusCode, String) {
    let req = Request::put(format!("/registry/services/{service}/instances/{id}"))
        .header("content-type", "application/json")
        .body(full(body.to_owned()))
        .unwrap();
    let (status, _, text) = send(admin, req).await;
    (status, text)
}

async fn deregister(admin: SocketAddr, service: &str, id: &str) -> StatusCode {
    let req = Request::delete(format!("/registry/services/{service}/instances/{id}"))
        .body(full(""))
        .unwrap();
    send(admin, req).await.0
}

/// A metric's value from `/metrics`, 0 when absent.
pub async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let (_, _, text) = get(admin, "/metrics").await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

/// An upstream that accepts connections, reads the request, and resets the connection
/// without answering. Counts connections.
struct Resetting {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Resetting {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn resetting() -> Resetting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (c, s) = (conns.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                () = s.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                // SO_LINGER 0: close with RST, before any response byte.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
            });
        }
    });
    Resetting { addr, conns, stop }
}

fn status_upstream(status: u16) -> impl Fn(&Seen) -> Response<BoxBody> + Send + Sync + 'static {
    move |_| {
        let mut r = Response::new(full("answer"));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }
}

#[tokio::test]
async fn a_registered_instance_takes_traffic_until_its_ttl_runs_out() {
    let up = Upstream::named("registered").await;
    let gw =
        gateway("[services.users]\n[[routes]]\npath = \"/users\"\nservice = \"users\"\n").await;

    // No instance yet: 503 naming the service.
    let (status, _, body) = get(gw.listen_addr, "/users").await;
    assert_eq!(status, 503);
    assert!(body.contains("users"), "{body}");

    let with_ttl = |ttl: &str| {
        format!(
            r#"{{"address": "{}", "ttl": "{ttl}", "metadata": {{"zone": "a"}}}}"#,
            up.addr
        )
    };
    let admin = gw.admin_addr;
    let expires_in_ms = move || async move {
        let (_, _, view) = get(admin, "/registry/services/users").await;
        let view: serde_json::Value = serde_json::from_str(&view).unwrap();
        let instance = &view["instances"][0];
        assert_eq!(instance["id"], "u1");
        assert_eq!(instance["metadata"]["zone"], "a");
        instance["expires_in_ms"].as_u64().unwrap()
    };
    // A TTL far longer than the steps below take, however loaded the machine: a renewal is
    // seen as the expiry moving later, not as surviving a race against a 1 s TTL.
    let (status, text) = register(gw.admin_addr, "users", "u1", &with_ttl("30s")).await;
    assert_eq!(status, 200, "{text}");
    // The first expiry is at most this + 30 s.
    let registered = std::time::Instant::now();
    assert_eq!(get(gw.listen_addr, "/users").await.2, "registered");
    let first = expires_in_ms().await;
    assert!(first <= 30_000, "{first}");
    assert_eventually!(
        expires_in_ms().await + 100 < first,
        "100 ms pass for the registration"
    );
    let renewing = std::time::Instant::now();
    assert!(renewing > registered + Duration::from_millis(100));
    assert_eq!(
        register(gw.admin_addr, "users", "u1", &with_ttl("30s"))
            .await
            .0,
        200
    );
    // The renewed expiry is at least `renewing` + 30 s (less 1 ms of rounding): over 99 ms
    // later than the first.
    let renewed = expires_in_ms().await;
    let since = renewing.elapsed().as_millis() as u64;
    assert!(
        renewed + since + 1 >= 30_000,
        "a renewal moves the expiry: {renewed} ms left {since} ms after renewing"
    );
    assert_eq!(get(gw.listen_addr, "/users").await.0, 200);

    // Renewed with a short TTL and then not: it expires, and from then on receives nothing.
    assert_eq!(
        register(gw.admin_addr, "users", "u1", &with_ttl("1s"))
            .await
            .0,
        200
    );
    assert!(expires_in_ms().await <= 1000);
    assert_eventually!(
        get(gw.listen_addr, "/users").await.0 == 503,
        "the unrenewed instance expires"
    );
    let hits = up.hits();
    for _ in 0..20 {
        let (status, _, body) = get(gw.listen_addr, "/users").await;
        assert_eq!(status, 503);
        assert!(body.contains("users"));
    }
    assert_eq!(up.hits(), hits, "an expired instance received requests");
    // The reaper (every 250 ms) then removes it from the registry.
    assert_eventually!(
        get(gw.admin_addr, "/registry/services/users")
            .await
            .2
            .contains(r#""instances":[]"#),
        "removed after expiry"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn deregistration_stops_traffic_and_bad_registrations_say_why() {
    let up = Upstream::named("b").await;
    let gw =
        gateway("[services.users]\n[[routes]]\npath = \"/users\"\nservice = \"users\"\n").await;
    let body = format!(r#"{{"address": "{}"}}"#, up.addr);
    assert_eq!(register(gw.admin_addr, "users", "b1", &body).await.0, 200);
    assert_eq!(get(gw.listen_addr, "/users").await.0, 200);
    assert_eq!(deregister(gw.admin_addr, "users", "b1").await, 204);
    assert_eq!(get(gw.listen_addr, "/users").await.0, 503);
    assert_eq!(deregister(gw.admin_addr, "users", "b1").await, 404);

    for (body, expect) in [
        ("{not json", "invalid registration for users/x"),
        (r#"{"address": "nowhere"}"#, "address:"),
        (r#"{"address": "127.0.0.1:1", "ttl": "5ms"}"#, "ttl:"),
        (r#"{"address": "127.0.0.1:1", "weight": 0}"#, "weight:"),
        (
            r#"{"address": "127.0.0.1:1", "colour": "red"}"#,
            "unknown field `colour`",
        ),
    ] {
        let (status, text) = register(gw.admin_addr, "users", "x", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(expect), "{body}: {text}");
    }
    gw.shutdown().await;
}

fn weighted(addrs: &[(SocketAddr, u32)], extra: &str) -> String {
    let instances: Vec<String> = addrs
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[services.s]\ninstances = [{}]\n{extra}\n[[routes]]\npath = \"/\"\nservice = \"s\"\n",
        instances.join(", ")
    )
}

#[tokio::test]
async fn round_robin_follows_the_weights_exactly() {
    let ups = [
        Upstream::named("a").await,
        Upstream::named("b").await,
        Upstream::named("c").await,
    ];
    let gw = gateway(&weighted(
        &[(ups[0].addr, 1), (ups[1].addr, 2), (ups[2].addr, 3)],
        "",
    ))
    .await;
    for _ in 0..600 {
        assert_eq!(get(gw.listen_addr, "/").await.0, 200);
    }
    assert_eq!(
        [ups[0].hits(), ups[1].hits(), ups[2].hits()],
        [100, 200, 300]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let ups = [Upstream::named("a").await, Upstream::named("b").await];
    let gw = gateway(&weighted(
        &[(ups[0].addr, 1), (ups[1].addr, 3)],
        "balancer = \"random\"",
    ))
    .await;
    for _ in 0..2000 {
        get(gw.listen_addr, "/").await;
    }
    // Expected 500 for the light one; 4 standard deviations is about 78.
    let light = ups[0].hits();
    assert!(
        (420..=580).contains(&light),
        "light instance got {light} of 2000"
    );
    assert_eq!(light + ups[1].hits(), 2000);
    gw.shutdown().await;
}

#[tokio::test]
async fn least_request_avoids_the_busy_instance() {
    let slow = Upstream::slow(Duration::from_millis(300), "slow").await;
    let fast = Upstream::named("fast").await;
    let gw = gateway(&weighted(
        &[(slow.addr, 1), (fast.addr, 1)],
        "balancer = \"least_request\"",
    ))
    .await;
    // Two clients, each sending requests one after another for 1.5 s: a request arriving
    // while the slow instance holds one goes to the idle fast one.
    let addr = gw.listen_addr;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    assert_eq!(get(addr, "/").await.0, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // Round robin would give both the same number of requests.
    let (slow_hits, fast_hits) = (slow.hits(), fast.hits());
    assert!(
        slow_hits * 10 < fast_hits,
        "slow {slow_hits}, fast {fast_hits}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_moves_only_the_departed_instances_keys() {
    let ups = [
        Upstream::named("h0").await,
        Upstream::named("h1").await,
        Upstream::named("h2").await,
    ];
    let gw = gateway(
        "[services.s]\nbalancer = \"hash\"\nhash_on = \"header:x-user\"\n[[routes]]\npath = \"/\"\nservice = \"s\"\n",
    )
    .await;
    for (i, up) in ups.iter().enumerate() {
        let body = format!(r#"{{"address": "{}", "ttl": "60s"}}"#, up.addr);
        assert_eq!(
            register(gw.admin_addr, "s", &format!("h{i}"), &body)
                .await
                .0,
            200
        );
    }
    let served_by = |user: usize| {
        let addr = gw.listen_addr;
        async move {
            let req = Request::get("/")
                .header("x-user", format!("user-{user}"))
                .body(full(""))
                .unwrap();
            send(addr, req).await.2
        }
    };
    let mut before = HashMap::new();
    for user in 0..200 {
        before.insert(user, served_by(user).await);
    }
    for user in 0..200 {
        assert_eq!(
            served_by(user).await,
            before[&user],
            "user-{user} moved without churn"
        );
    }
    let per_instance = |name: &str| before.values().filter(|v| *v == name).count();
    for name in ["h0", "h1", "h2"] {
        assert!(
            per_instance(name) >= 30,
            "{name} got {} of 200 keys",
            per_instance(name)
        );
    }
    assert_eq!(deregister(gw.admin_addr, "s", "h1").await, 204);
    for user in 0..200 {
        let now = served_by(user).await;
        assert_ne!(now, "h1");
        if before[&user] != "h1" {
            assert_eq!(
                now, before[&user],
                "user-{user} moved although its instance stayed"
            );
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failing_instance_is_ejected_then_returns_with_a_longer_ejection() {
    let bad = Upstream::recording(status_upstream(500)).await;
    let good = Upstream::named("good").await;
    let extra = "retries = 0\n[services.s.passive_health]\nconsecutive_failures = 3\nejection_time = \"1s\"";
    let gw = gateway(&weighted(&[(bad.addr, 1), (good.addr, 1)], extra)).await;
    for _ in 0..20 {
        get(gw.listen_addr, "/").await;
    }
    assert_eq!(bad.hits(), 3, "ejected after 3 consecutive 5xx");
    assert_eq!(good.hits(), 17);
    let (_, _, view) = get(gw.admin_addr, "/admin/services").await;
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let bad_view = view["services"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == bad.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(bad_view["health"]["available"], false);
    assert!(bad_view["health"]["ejected_for_ms"].as_u64().unwrap() <= 1000);

    // Back after its ejection; failing again ejects it for twice as long.
    let admin = gw.admin_addr;
    let bad_addr = bad.addr.to_string();
    let bad_available = move || {
        let bad_addr = bad_addr.clone();
        async move {
            let view = get(admin, "/admin/services").await.2;
            let view: serde_json::Value = serde_json::from_str(&view).unwrap();
            view["services"][0]["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["address"] == bad_addr.as_str() && i["health"]["available"] == true)
        }
    };
    assert_eventually!(bad_available().await, "the ejection ends");
    for _ in 0..20 {
        get(gw.listen_addr, "/").await;
    }
    assert_eq!(bad.hits(), 6);
    let (_, _, view) = get(gw.admin_addr, "/admin/services").await;
    assert!(view.contains(r#""ejections":2"#), "{view}");
    assert_eq!(
        metric(
            gw.admin_addr,
            r#"sluice_upstream_ejections_total{service="s"}"#
        )
        .await,
        2
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn ejection_never_takes_out_more_than_the_allowed_share() {
    let ups = [
        Upstream::recording(status_upstream(502)).await,
        Upstream::recording(status_upstream(502)).await,
    ];
    let extra = "retries = 0\n[services.s.passive_health]\nconsecutive_failures = 2\nejection_time = \"30s\"\nmax_ejected_percent = 50";
    let gw = gateway(&weighted(&[(ups[0].addr, 1), (ups[1].addr, 1)], extra)).await;
    for _ in 0..20 {
        assert_eq!(get(gw.listen_addr, "/").await.0, 502);
    }
    // One is ejected; the other keeps taking traffic rather than leaving nothing.
    let mut hits = [ups[0].hits(), ups[1].hits()];
    hits.sort_unstable();
    assert_eq!(hits, [2, 18]);
    gw.shutdown().await;
}

#[tokio::test]
async fn retries_reach_healthy_instances_past_refusing_and_resetting_ones() {
    let refusing = closed_port().await;
    let reset = resetting().await;
    let good = Upstream::named("good").await;
    let extra = "retries = 2\n[services.s.retry]\non = [\"connect\", \"reset\"]\nbackoff = \"1ms\"\nmax_backoff = \"5ms\"\n[services.s.passive_health]\nmax_ejected_percent = 70";
    let gw = gateway(&weighted(
        &[(refusing, 1), (reset.addr, 1), (good.addr, 1)],
        extra,
    ))
    .await;
    let addr = gw.listen_addr;
    let ok = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let ok = ok.clone();
            tokio::spawn(async move {
                for _ in 0..1250 {
                    if get(addr, "/").await.0 == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok >= 9990, "{ok} of 10000 succeeded");
    let retries = metric(
        gw.admin_addr,
        r#"sluice_upstream_retries_total{service="s"}"#,
    )
    .await;
    // The budget: 20 % of requests plus 5 per second over the 10 s window.
    assert!(retries <= 10_000 / 5 + 50, "{retries} retries");
    assert!(retries > 0);
    assert!(
        reset.conns.load(Ordering::SeqCst) > 0,
        "the resetting instance was tried"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_retry_budget_caps_retries_when_an_instance_keeps_failing() {
    let refusing = closed_port().await;
    let good = Upstream::named("good").await;
    // No ejection, so every request that lands on the refusing instance wants a retry: half
    // of them, far above the 10 % budget.
    let extra = "[services.s.retry]\nbudget_percent = 10\nmin_retries_per_second = 0\nbackoff = \"1ms\"\n[services.s.passive_health]\nconsecutive_failures = 0";
    let gw = gateway(&weighted(&[(refusing, 1), (good.addr, 1)], extra)).await;
    let mut failed = 0;
    for _ in 0..1000 {
        if get(gw.listen_addr, "/").await.0 != 200 {
            failed += 1;
        }
    }
    let retries = metric(
        gw.admin_addr,
        r#"sluice_upstream_retries_total{service="s"}"#,
    )
    .await;
    let refused = metric(
        gw.admin_addr,
        r#"sluice_upstream_retry_budget_exhausted_total{service="s"}"#,
    )
    .await;
    assert!(retries <= 100, "{retries} retries for 1000 requests");
    assert!(retries >= 90, "the budget is used: {retries}");
    assert_eq!(
        retries + refused,
        500,
        "every refused connect wanted one retry"
    );
    assert_eq!(failed, refused);
    assert_eq!(good.hits() as u64, 500 + retries);
    gw.shutdown().await;
}

#[tokio::test]
async fn post_is_not_retried_by_default_but_get_is() {
    let refusing = closed_port().await;
    let good = Upstream::named("good").await;
    let extra = "[services.s.passive_health]\nconsecutive_failures = 0";
    let gw = gateway(&weighted(&[(refusing, 1), (good.addr, 1)], extra)).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = Request::post("/").body(full("payload")).unwrap();
        statuses.push(send(gw.listen_addr, req).await.0.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(good.hits(), 5);
    assert_eq!(
        metric(
            gw.admin_addr,
            r#"sluice_upstream_retries_total{service="s"}"#
        )
        .await,
        0
    );
    for _ in 0..10 {
        assert_eq!(get(gw.listen_addr, "/").await.0, 200);
    }
    assert_eq!(
        metric(
            gw.admin_addr,
            r#"sluice_upstream_retries_total{service="s"}"#
        )
        .await,
        5
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn status_and_per_try_timeout_retries_go_to_another_instance_with_the_body() {
    let unavailable = Upstream::recording(status_upstream(503)).await;
    let slow = Upstream::slow(Duration::from_secs(3), "slow").await;
    let good = Upstream::recording(|seen| Response::new(full(seen.body.clone()))).await;
    let extra = "retries = 2\nper_try_timeout = \"200ms\"\n[services.s.retry]\non = [\"503\", \"timeout\"]\nmethods = [\"POST\"]\nbackoff = \"1ms\"\n[services.s.passive_health]\nconsecutive_failures = 0";
    let gw = gateway(&weighted(
        &[(unavailable.addr, 1), (slow.addr, 1), (good.addr, 1)],
        extra,
    ))
    .await;
    for i in 0..6 {
        let req = Request::post("/").body(full(format!("body-{i}"))).unwrap();
        let (status, _, body) = send(gw.listen_addr, req).await;
        assert_eq!((status.as_u16(), body), (200, format!("body-{i}")));
    }
    assert!(
        unavailable.hits() >= 2 && slow.hits() >= 2,
        "both bad instances were tried"
    );
    // Every retry carried the same body.
    for seen in unavailable.seen.lock().unwrap().iter() {
        assert!(String::from_utf8_lossy(&seen.body).starts_with("body-"));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_resolver_routes_by_service_name() {
    let up = Upstream::recording(|_| Response::new(full("greeter"))).await;
    let gw = gateway("[resolver]\nenabled = true\nnamespace = \"go.micro.api.\"\n").await;
    assert_eq!(get(gw.listen_addr, "/greeter/say/hello").await.0, 404);
    let body = format!(r#"{{"address": "{}"}}"#, up.addr);
    assert_eq!(
        register(gw.admin_addr, "go.micro.api.greeter", "g1", &body)
            .await
            .0,
        200
    );
    let (status, _, text) = get(gw.listen_addr, "/greeter/say/hello?x=1").await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "greeter"));
    assert_eq!(up.last().uri, "/greeter/say/hello?x=1");
    assert_eq!(get(gw.listen_addr, "/unknown/x").await.0, 404);
    let requests = metric(
        gw.admin_addr,
        r#"sluice_requests_total{route="resolver:go.micro.api.greeter",status="200"}"#,
    )
    .await;
    assert_eq!(requests, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_can_set_its_own_number_of_retries() {
    let refusing = closed_port().await;
    let good = Upstream::named("good").await;
    let config = format!(
        "[services.s]\ninstances = [\"{refusing}\", \"{}\"]\nretries = 0\n[services.s.passive_health]\nconsecutive_failures = 0\n\
         [[routes]]\npath = \"/none\"\nservice = \"s\"\n[[routes]]\npath = \"/retried\"\nservice = \"s\"\nretries = 1\n",
        good.addr
    );
    let gw = gateway(&config).await;
    let failed = |path: &'static str| {
        let addr = gw.listen_addr;
        async move {
            let mut failed = 0;
            for _ in 0..10 {
                if get(addr, path).await.0 != 200 {
                    failed += 1;
                }
            }
            failed
        }
    };
    assert_eq!(failed("/none").await, 5, "the service retries nothing");
    assert_eq!(failed("/retried").await, 0, "the route retries once");
    gw.shutdown().await;
}

#[tokio::test]
async fn active_checks_take_an_instance_out_and_bring_it_back() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = healthy.clone();
    let checked = Upstream::recording(move |seen| {
        let ok = flag.load(Ordering::SeqCst) || seen.uri.path() != "/health";
        let mut r = Response::new(full("checked"));
        if !ok {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    })
    .await;
    let other = Upstream::named("other").await;
    let extra = "[services.s.active_health]\npath = \"/health\"\ninterval = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2";
    let gw = gateway(&weighted(&[(checked.addr, 1), (other.addr, 1)], extra)).await;
    let served = |n: usize| {
        let addr = gw.listen_addr;
        async move {
            let mut by_checked = 0;
            for _ in 0..n {
                if get(addr, "/").await.2 == "checked" {
                    by_checked += 1;
                }
            }
            by_checked
        }
    };
    assert_eq!(served(10).await, 5);
    // Not a fixed sleep and a hope: wait for the checks' verdict, then check the traffic.
    let admin = gw.admin_addr;
    let failing = move || async move {
        get(admin, "/admin/services")
            .await
            .2
            .contains(r#""failing_checks":true"#)
    };
    healthy.store(false, Ordering::SeqCst);
    assert_eventually!(failing().await, "the instance fails its checks");
    assert_eq!(
        served(10).await,
        0,
        "failing its checks, it takes no traffic"
    );
    healthy.store(true, Ordering::SeqCst);
    assert_eventually!(!failing().await, "the instance passes its checks again");
    assert_eq!(served(10).await, 5, "back after passing its checks");
    gw.shutdown().await;
}
