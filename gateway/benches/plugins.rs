//! Plugin runtime benchmarks (not tests): the per-request cost of a no-op plugin, pooled and
//! per-request; compile time cold and from the cache; time from a file landing in the plugin
//! directory to the plugin serving.
//!
//! Run with `scripts/bench.sh plugins` (it builds the fixtures first), or:
//! `SLUICE_BENCH_PLUGIN=path/to/noop.wasm cargo bench -p sluice --bench plugins`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use sluice::chain::{UpstreamOutcome, on_request, on_response};
use sluice::config::{Config, InstanceMode};
use sluice::metrics::Metrics;
use sluice::plugin::host::RequestState;
use sluice::plugin::{PluginRuntime, PluginSet};

fn main() {
    // `cargo test --all-targets` runs benches once as tests, without `--bench`: nothing to
    // measure then (and no plugin was built for it).
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmarks run with `cargo bench` (scripts/bench.sh plugins)");
        return;
    }
    let plugin = PathBuf::from(
        std::env::var("SLUICE_BENCH_PLUGIN")
            .expect("set SLUICE_BENCH_PLUGIN to the noop plugin's .wasm"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("plugin: {}", plugin.display());
        // SLUICE_BENCH_ONLY=pooled|per-request|load|drop|auth|breaker|tracing runs one part
        // (`auth-hit` / `auth-miss`: only auth's repeated-token / cache-off round, 40 times
        // longer, for a profile; SLUICE_BENCH_AUTH_ALG=HS256 keeps one algorithm;
        // SLUICE_BENCH_AUTH_FORWARD=1 forwards a claim).
        let only = std::env::var("SLUICE_BENCH_ONLY").ok();
        let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
        if run("pooled") {
            per_request_cost(&plugin, InstanceMode::Pooled, 200_000, None).await;
        }
        if run("per-request") {
            // One fresh instance serves both hooks (held from on-request to on-response) ...
            per_request_cost(&plugin, InstanceMode::PerRequest, 20_000, None).await;
            // ... or, past `max_held_instances` (0: never held), one fresh instance per hook.
            per_request_cost(&plugin, InstanceMode::PerRequest, 20_000, Some(0)).await;
        }
        if run("load") {
            compile_times(&plugin).await;
        }
        if run("drop") {
            drop_to_serving(&plugin).await;
        }
        if run("auth") {
            auth_verify_cost().await;
        }
        if only.as_deref() == Some("auth-hit") {
            auth_verify_round(true, 200_000).await;
        }
        if only.as_deref() == Some("auth-miss") {
            auth_verify_round(false, 200_000).await;
        }
        if run("breaker") {
            builtin_cost(&plugin, "breaker", "defaults, circuit closed", "").await;
            // Without the bulkhead's batch and the timeout call.
            builtin_cost(
                &plugin,
                "breaker",
                "no bulkhead, no timeout",
                "max_concurrent_requests = 0\ntimeout = 0\n",
            )
            .await;
        }
        if run("tracing") {
            // No `[telemetry]`: the plugin runs, nothing is exported (issue #13's goal 3 case).
            builtin_cost(&plugin, "tracing", "defaults, no [telemetry]", "").await;
        }
        // SLUICE_BENCH_LANGS="rust=a.wasm,python=b.wasm,js=c.wasm": the same trivial plugin
        // (`sluice plugin new`'s template) in each language.
        // SLUICE_BENCH_ROUNDS=N (default 1): every plugin is loaded first, then measured in N
        // interleaved rounds (so a busy machine's noise falls on all of them alike), with the
        // median per plugin at the end; SLUICE_BENCH_N requests per round (default 20 000).
        if let Ok(langs) = std::env::var("SLUICE_BENCH_LANGS") {
            let mut loaded = Vec::new();
            for entry in langs.split(',').filter(|e| !e.is_empty()) {
                let (lang, path) = entry.split_once('=').expect("LANG=PATH");
                loaded.push(load_language(lang, Path::new(path)).await);
            }
            let rounds: usize = env_number("SLUICE_BENCH_ROUNDS", 1);
            let n: u32 = env_number("SLUICE_BENCH_N", 20_000);
            let mut figures = vec![Vec::new(); loaded.len()];
            for _ in 0..rounds {
                for (lang, figures) in loaded.iter().zip(&mut figures) {
                    figures.push(language_round(lang, n).await);
                }
            }
            if rounds > 1 {
                for (lang, figures) in loaded.iter().zip(&mut figures) {
                    let median = |f: fn(&(f64, f64)) -> f64| {
                        let mut v: Vec<f64> = figures.iter().map(f).collect();
                        v.sort_by(f64::total_cmp);
                        v[v.len() / 2]
                    };
                    println!(
                        "template plugin, {}: median of {rounds} rounds {:.1} µs per request ({:.1} µs CPU)",
                        lang.lang,
                        median(|f| f.0),
                        median(|f| f.1)
                    );
                }
            }
        }
    });
}

/// A number from the environment, or `default` when unset.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// This thread's CPU time so far (Linux: `/proc/thread-self/schedstat`), or None elsewhere.
/// The round trips run on this thread (current-thread runtime), so the difference is their
/// CPU time, which a busy machine disturbs less than the wall clock.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// One language's template plugin, loaded (pooled) and warmed up.
struct Language {
    lang: String,
    rt: PluginRuntime,
    set: Arc<PluginSet>,
    chain: [String; 1],
    _dirs: [tempfile::TempDir; 2],
}

/// Loads one language's template plugin and prints its load times (cold, from the cache).
async fn load_language(lang: &str, plugin: &Path) -> Language {
    let name = plugin.file_stem().unwrap().to_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(plugin, dir.path().join(format!("{name}.wasm"))).unwrap();
    std::fs::write(
        dir.path().join(format!("{name}.toml")),
        "greeting = \"hello\"\n",
    )
    .unwrap();
    let metrics = Metrics::new();
    let config = config_for(dir.path(), cache.path(), InstanceMode::Pooled);
    let cold = sluice::plugin::runtime(&config, metrics.plugins.clone()).unwrap();
    let started = Instant::now();
    assert_eq!(
        cold.reload().await.loaded,
        std::slice::from_ref(&name),
        "{lang}"
    );
    let cold_ms = started.elapsed().as_secs_f64() * 1e3;
    let rt = sluice::plugin::runtime(&config, metrics.plugins.clone()).unwrap();
    let started = Instant::now();
    assert_eq!(
        rt.reload().await.loaded,
        std::slice::from_ref(&name),
        "{lang}"
    );
    let warm_ms = started.elapsed().as_secs_f64() * 1e3;
    println!("template plugin, {lang}: load cold {cold_ms:.0} ms, from cache {warm_ms:.1} ms");
    let set = rt.current();
    let chain = [name];
    for _ in 0..500 {
        round_trip(&rt, &set, &chain, ok_response()).await;
    }
    Language {
        lang: lang.to_owned(),
        rt,
        set,
        chain,
        _dirs: [dir, cache],
    }
}

fn ok_response() -> http::Response<sluice::body::ResponseBody> {
    http::Response::new(sluice::body::ResponseBody::full(bytes::Bytes::new()))
}

/// Per-request cost (pooled) of one language's template plugin over `n` round trips: wall
/// clock and this thread's CPU time, µs per request.
async fn language_round(l: &Language, n: u32) -> (f64, f64) {
    let cpu = thread_cpu_ns();
    let started = Instant::now();
    for _ in 0..n {
        round_trip(&l.rt, &l.set, &l.chain, ok_response()).await;
    }
    let per_request = started.elapsed().as_secs_f64() / f64::from(n) * 1e6;
    let cpu = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / f64::from(n) / 1e3,
        _ => f64::NAN,
    };
    println!(
        "template plugin, {}: {per_request:.1} µs per request pooled (on-request + on-response), {cpu:.1} µs CPU",
        l.lang
    );
    (per_request, cpu)
}

/// The built-in `auth` plugin's verify cost per request (HS256, RS256, PS256, ES256, EdDSA):
/// with its token cache off (every request verifies the signature, through the gateway's
/// native `crypto`) against the same signature check done natively with aws-lc-rs (base64
/// decoding included) and with jsonwebtoken (RustCrypto, the plugin's former verifier), in the
/// same run; then a repeated token with the cache on.
async fn auth_verify_cost() {
    auth_verify_round(false, 5_000).await;
    auth_verify_round(true, 5_000).await;
}

async fn auth_verify_round(cached: bool, n: u32) {
    use aws_lc_rs::signature::{self, ParsedPublicKey};
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/auth/tests/keys");
    let read = |f: &str| std::fs::read_to_string(keys.join(f)).unwrap();
    let der = |f: &str| pem::parse(read(f)).unwrap().contents().to_vec();
    let secret = "bench-secret-0123456789abcdef0123";
    // SLUICE_BENCH_AUTH_FORWARD=1: forward the `sub` claim as `x-user-id`, as the README's
    // demo configuration does (any other value, e.g. 0, does not).
    let forward = if std::env::var("SLUICE_BENCH_AUTH_FORWARD").is_ok_and(|v| v == "1") {
        "forward_claims = { sub = \"x-user-id\" }\n"
    } else {
        ""
    };
    let config_text = format!(
        "[plugin.auth]\n{forward}token_cache_size = {}\n\
         [[plugin.auth.keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = \"{secret}\"\n\
         [[plugin.auth.keys]]\nkid = \"rs\"\nalg = \"RS256\"\npem = '''{rsa}'''\n\
         [[plugin.auth.keys]]\nkid = \"ps\"\nalg = \"PS256\"\npem = '''{rsa}'''\n\
         [[plugin.auth.keys]]\nkid = \"es\"\nalg = \"ES256\"\npem = '''{ec}'''\n\
         [[plugin.auth.keys]]\nkid = \"ed\"\nalg = \"EdDSA\"\npem = '''{ed}'''\n",
        if cached { 1024 } else { 0 },
        rsa = read("rsa_public.pem"),
        ec = read("ec256_public.pem"),
        ed = read("ed25519_public.pem"),
    );
    let mut config = sluice::config::Config::parse(&config_text, "bench").unwrap();
    let cache = tempfile::tempdir().unwrap();
    config.plugins.cache_dir = Some(cache.path().to_owned());
    // SLUICE_BENCH_AUTH_WASM=FILE: that build of `auth` instead of the built-in (a file of the
    // same name in the plugin dir overrides it), to compare two builds with one host.
    let dir = tempfile::tempdir().unwrap();
    if let Some(wasm) = std::env::var_os("SLUICE_BENCH_AUTH_WASM") {
        std::fs::copy(&wasm, dir.path().join("auth.wasm")).unwrap();
        config.plugins.dir = Some(dir.path().to_owned());
    }
    let metrics = Metrics::new();
    let rt = sluice::plugin::runtime(&config, metrics.plugins.clone()).unwrap();
    let report = rt.reload().await;
    assert_eq!(report.loaded, ["auth"], "{report:?}");
    let set = rt.current();
    let chain = ["auth".to_owned()];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "sub": "bench", "exp": now + 3600 });
    let rsa_private = EncodingKey::from_rsa_pem(read("rsa_private.pem").as_bytes()).unwrap();
    let rsa_public = || DecodingKey::from_rsa_pem(read("rsa_public.pem").as_bytes()).unwrap();
    // (name, kid, alg, signing key, jsonwebtoken's verifying key, aws-lc-rs's verifying key)
    type Case = (
        &'static str,
        &'static str,
        Algorithm,
        EncodingKey,
        DecodingKey,
        Option<ParsedPublicKey>,
    );
    let cases: Vec<Case> = vec![
        (
            "HS256",
            "hs",
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
            DecodingKey::from_secret(secret.as_bytes()),
            None,
        ),
        (
            "RS256",
            "rs",
            Algorithm::RS256,
            rsa_private.clone(),
            rsa_public(),
            ParsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                der("rsa_public.pem"),
            )
            .ok(),
        ),
        (
            "PS256",
            "ps",
            Algorithm::PS256,
            rsa_private,
            rsa_public(),
            ParsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, der("rsa_public.pem")).ok(),
        ),
        (
            "ES256",
            "es",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(read("ec256_private.pem").as_bytes()).unwrap(),
            DecodingKey::from_ec_pem(read("ec256_public.pem").as_bytes()).unwrap(),
            ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, der("ec256_public.pem")).ok(),
        ),
        (
            "EdDSA",
            "ed",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(read("ed25519_private.pem").as_bytes()).unwrap(),
            DecodingKey::from_ed_pem(read("ed25519_public.pem").as_bytes()).unwrap(),
            ParsedPublicKey::new(&signature::ED25519, der("ed25519_public.pem")).ok(),
        ),
    ];
    let only_alg = std::env::var("SLUICE_BENCH_AUTH_ALG").ok();
    for (name, kid, alg, encoding, decoding, native_key) in cases {
        if only_alg.as_deref().is_some_and(|a| a != name) {
            continue;
        }
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let call = || {
            let mut r = request();
            r.parts
                .headers
                .insert(http::header::AUTHORIZATION, bearer.clone());
            r
        };
        for _ in 0..200 {
            let out = on_request(&rt, &set, &chain, call()).await;
            assert!(out.response.is_none(), "{name}: the token was refused");
        }
        let started = Instant::now();
        for _ in 0..n {
            let out = on_request(&rt, &set, &chain, call()).await;
            assert!(out.response.is_none());
            std::hint::black_box(out.request);
        }
        let in_plugin = started.elapsed().as_secs_f64() / f64::from(n) * 1e6;
        if cached {
            println!(
                "auth {name}, repeated token (cache on): {in_plugin:.2} µs per request in the plugin"
            );
            continue;
        }
        let validation = Validation::new(alg);
        let started = Instant::now();
        for _ in 0..n {
            let data =
                jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
            std::hint::black_box(data);
        }
        let rust_crypto = started.elapsed().as_secs_f64() / f64::from(n) * 1e6;
        let native = native_key.map(|key| {
            let (signed, sig) = token.rsplit_once('.').unwrap();
            let started = Instant::now();
            for _ in 0..n {
                let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(sig)
                    .unwrap();
                key.verify_sig(signed.as_bytes(), &sig).unwrap();
            }
            started.elapsed().as_secs_f64() / f64::from(n) * 1e6
        });
        match native {
            Some(native) => println!(
                "auth {name} (cache off): {in_plugin:.1} µs per request in the plugin (on-request), native aws-lc-rs verify {native:.1} µs ({:.2}x), jsonwebtoken/RustCrypto {rust_crypto:.1} µs",
                in_plugin / native
            ),
            None => println!(
                "auth {name} (cache off): {in_plugin:.1} µs per request in the plugin (on-request), native jsonwebtoken {rust_crypto:.1} µs: {:.2}x",
                in_plugin / rust_crypto
            ),
        }
    }
}

/// The built-in `breaker` plugin's cost per request (on-request + on-response, circuit closed,
/// default settings: bulkhead slot taken and released, upstream timeout set, outcome and
/// latency counted) against the no-op plugin, both pooled, in the same process, interleaved;
/// the median of 5 rounds.
/// The cost a built-in plugin adds over the no-op plugin, per request (both hooks), pooled.
async fn builtin_cost(noop: &Path, builtin: &str, label: &str, settings: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(noop, dir.path().join("noop.wasm")).unwrap();
    let mut config = Config::parse(&format!("[plugin.{builtin}]\n{settings}"), "bench").unwrap();
    config.plugins.dir = Some(dir.path().to_owned());
    config.plugins.cache_dir = Some(cache.path().to_owned());
    config.plugins.defaults.instance = InstanceMode::Pooled;
    config.log.access = false;
    let metrics = Metrics::new();
    let rt = sluice::plugin::runtime(&config, metrics.plugins.clone()).unwrap();
    let mut loaded = rt.reload().await.loaded;
    loaded.sort();
    assert!(
        loaded.iter().any(|l| l == builtin) && loaded.iter().any(|l| l == "noop"),
        "{loaded:?}"
    );
    let set = rt.current();
    let ok = http::Response::new(sluice::body::ResponseBody::full(bytes::Bytes::new()));
    let (head, _) = ok.into_parts();
    let n = 50_000u32;
    let measure = |chain: [String; 1]| {
        let (rt, set, head) = (&rt, &set, &head);
        async move {
            let started = Instant::now();
            for _ in 0..n {
                let resp = http::Response::from_parts(
                    head.clone(),
                    sluice::body::ResponseBody::full(bytes::Bytes::new()),
                );
                std::hint::black_box(round_trip(rt, set, &chain, resp).await);
            }
            started.elapsed().as_secs_f64() / f64::from(n) * 1e6
        }
    };
    // Warm-up (instances created, caches filled).
    measure(["noop".to_owned()]).await;
    measure([builtin.to_owned()]).await;
    let mut noop_us = Vec::new();
    let mut builtin_us = Vec::new();
    for _ in 0..5 {
        noop_us.push(measure(["noop".to_owned()]).await);
        builtin_us.push(measure([builtin.to_owned()]).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (noop_us, builtin_us) = (median(&mut noop_us), median(&mut builtin_us));
    println!(
        "{builtin} ({label}) vs no-op, pooled: {builtin_us:.2} µs vs {noop_us:.2} µs per request (on-request + on-response): {builtin} adds {:.2} µs (median of 5 x {n})",
        builtin_us - noop_us
    );
}

fn config_for(dir: &Path, cache: &Path, mode: InstanceMode) -> Config {
    let mut config = Config::default();
    config.plugins.dir = Some(dir.to_owned());
    config.plugins.cache_dir = Some(cache.to_owned());
    config.plugins.defaults.instance = mode;
    config.log.access = false;
    config
}

/// One request through `chain`: on-request (which must let it through), then on-response
/// with `response` as the upstream's answer (which must not fail).
async fn round_trip(
    rt: &PluginRuntime,
    set: &PluginSet,
    chain: &[String],
    response: http::Response<sluice::body::ResponseBody>,
) -> http::Response<sluice::body::ResponseBody> {
    let out = on_request(rt, set, chain, request()).await;
    assert!(
        out.response.is_none() && out.error.is_none(),
        "the chain answered"
    );
    let upstream = UpstreamOutcome {
        failure: None,
        attempted: true,
    };
    let (response, error, _) = on_response(rt, &out.ran, out.request, response, upstream).await;
    assert!(error.is_none(), "on-response failed: {error:?}");
    response
}

fn request() -> Box<RequestState> {
    let (mut parts, ()) = http::Request::get("/bench?x=1")
        .body(())
        .unwrap()
        .into_parts();
    for (k, v) in [
        ("host", "example"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
    ] {
        parts.headers.insert(k, HeaderValue::from_static(v));
    }
    Box::new(RequestState::new(
        parts,
        SocketAddr::from(([127, 0, 0, 1], 1234)),
        std::sync::Arc::from("bench"),
        HeaderValue::from_static("0123456789abcdef"),
        Default::default(),
    ))
}

/// `max_held_instances`: `[plugins] max_held_instances` when set.
async fn per_request_cost(plugin: &Path, mode: InstanceMode, n: u32, max_held: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(plugin, dir.path().join("noop.wasm")).unwrap();
    let metrics = Metrics::new();
    let mut config = config_for(dir.path(), cache.path(), mode);
    if let Some(max) = max_held {
        config.plugins.max_held_instances = max;
    }
    let rt = sluice::plugin::runtime(&config, metrics.plugins.clone()).unwrap();
    assert_eq!(rt.reload().await.loaded, ["noop"]);
    let chain = ["noop".to_owned()];
    let set = rt.current();
    let ok = http::Response::new(sluice::body::ResponseBody::full(bytes::Bytes::new()));
    let (mut head, _) = ok.into_parts();
    // Warm up, then measure request + response phase together, as a request pays them.
    for _ in 0..1000 {
        let resp = http::Response::from_parts(
            head.clone(),
            sluice::body::ResponseBody::full(bytes::Bytes::new()),
        );
        head = round_trip(&rt, &set, &chain, resp).await.into_parts().0;
    }
    // The same work without the plugin calls: building the request and response values.
    let started = Instant::now();
    for _ in 0..n {
        let r = request();
        let resp = http::Response::from_parts(
            head.clone(),
            sluice::body::ResponseBody::full(bytes::Bytes::new()),
        );
        std::hint::black_box((r, resp));
    }
    let baseline = started.elapsed();
    let started = Instant::now();
    for _ in 0..n {
        let resp = http::Response::from_parts(
            head.clone(),
            sluice::body::ResponseBody::full(bytes::Bytes::new()),
        );
        std::hint::black_box(round_trip(&rt, &set, &chain, resp).await);
    }
    let total = started.elapsed();
    let added = total.saturating_sub(baseline).as_secs_f64() / f64::from(n) * 1e6;
    let held = match max_held {
        Some(max) => format!(", max_held_instances = {max}"),
        None => String::new(),
    };
    println!(
        "no-op plugin, {mode:?}{held}: {added:.2} µs added per request (on-request + on-response, {n} requests)"
    );
}

async fn compile_times(plugin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(plugin, dir.path().join("noop.wasm")).unwrap();
    let metrics = Metrics::new();
    let cold = sluice::plugin::runtime(
        &config_for(dir.path(), cache.path(), InstanceMode::Pooled),
        metrics.plugins.clone(),
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(cold.reload().await.loaded, ["noop"]);
    let cold_time = started.elapsed();
    // A new runtime (as after a restart) with the same cache directory.
    let warm = sluice::plugin::runtime(
        &config_for(dir.path(), cache.path(), InstanceMode::Pooled),
        metrics.plugins.clone(),
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(warm.reload().await.loaded, ["noop"]);
    let warm_time = started.elapsed();
    println!(
        "load (read, compile, check world, init): cold {:.1} ms, from the cache after a restart {:.1} ms",
        cold_time.as_secs_f64() * 1e3,
        warm_time.as_secs_f64() * 1e3
    );
}

async fn drop_to_serving(plugin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let rt = Arc::new(
        sluice::plugin::runtime(
            &config_for(dir.path(), cache.path(), InstanceMode::Pooled),
            metrics.plugins.clone(),
        )
        .unwrap(),
    );
    // Warm the cache with one load.
    std::fs::copy(plugin, dir.path().join("warm.wasm")).unwrap();
    rt.reload().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _watch = sluice::plugin::watcher::spawn(rt.clone(), shutdown.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes = std::fs::read(plugin).unwrap();
    let mut times = Vec::new();
    for i in 0..10 {
        let name = format!("drop{i}");
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &bytes).unwrap();
        let started = Instant::now();
        // The atomic way to deploy: write elsewhere, rename into place.
        std::fs::rename(&tmp, dir.path().join(format!("{name}.wasm"))).unwrap();
        while rt.current().get(&name).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name} never loaded"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(started.elapsed());
    }
    shutdown.cancel();
    times.sort();
    println!(
        "file renamed into the plugin directory → serving (warm cache): median {:.1} ms, max {:.1} ms (10 drops)",
        times[5].as_secs_f64() * 1e3,
        times[9].as_secs_f64() * 1e3
    );
}
