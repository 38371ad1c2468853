//! One connection to etcd, shared by what the gateway keeps there (the service registry and
//! the plugins' key-value store), and [`mirror`], which keeps an in-memory copy of a key
//! prefix current: a full read, then a watch from the next revision; on any error, wait
//! (growing back-off), reconnect and start again with a full read, so the copy converges.
//!
//! Over TLS ([`EtcdTls`], `[cluster] tls_ca`, `tls_cert`, `tls_key`) the connection is made
//! with the gateway's own TLS stack (rustls with aws-lc-rs, see `tls`) through etcd-client's
//! `raw-channel`: its `tls-*` features would build tonic's TLS, which turns on rustls'
//! logging crate-wide (a warning per handshake a client can provoke, see Cargo.toml).

mod tls;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio_util::sync::CancellationToken;

pub use self::tls::{EtcdTls, connect as connect_tls};

/// A lazily made, shared etcd client and whether etcd was reachable last time.
pub struct EtcdConnection {
    endpoints: Vec<String>,
    timeout: Duration,
    /// etcd user name and password, when etcd has authentication on.
    user: Option<(String, String)>,
    /// TLS to etcd, when set.
    tls: Option<EtcdTls>,
    client: tokio::sync::Mutex<Option<Client>>,
    health: Mutex<Health>,
}

impl std::fmt::Debug for EtcdConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConnection")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Health {
    connected: bool,
    last_error: Option<String>,
    since: Instant,
}

/// Whether etcd is reachable.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EtcdStatus {
    /// Reachable now.
    pub connected: bool,
    /// The last error, while unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// For how long it has been unreachable (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_for_s: Option<u64>,
}

impl EtcdConnection {
    /// A connection to `endpoints`, made on first use; `timeout` bounds connecting and each
    /// call.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Arc<Self> {
        Self::with_user(endpoints, timeout, None)
    }

    /// The same, authenticating as `user` (name, password).
    pub fn with_user(
        endpoints: Vec<String>,
        timeout: Duration,
        user: Option<(String, String)>,
    ) -> Arc<Self> {
        Self::with_tls(endpoints, timeout, user, None)
    }

    /// The same, over TLS when `tls` is set.
    pub fn with_tls(
        endpoints: Vec<String>,
        timeout: Duration,
        user: Option<(String, String)>,
        tls: Option<EtcdTls>,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoints,
            timeout,
            user,
            tls,
            client: tokio::sync::Mutex::new(None),
            health: Mutex::new(Health {
                connected: false,
                last_error: Some("not connected yet".into()),
                since: Instant::now(),
            }),
        })
    }

    /// A connected client (the channel reconnects by itself once made).
    pub async fn client(&self) -> Result<Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let mut options = ConnectOptions::new();
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.clone(), password.clone());
        }
        let options = options
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            // Notice a dead etcd within seconds even on an idle watch.
            .with_keep_alive(Duration::from_secs(1), self.timeout)
            .with_keep_alive_while_idle(true);
        let connecting = async {
            match &self.tls {
                None => Client::connect(&self.endpoints, Some(options))
                    .await
                    .map_err(|e| format!("connecting to {:?}: {e}", self.endpoints)),
                Some(tls) => tls::connect(&self.endpoints, tls, options, self.timeout).await,
            }
        };
        let client = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| format!("connecting to {:?} timed out", self.endpoints))??;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops the client so the next call reconnects (a broken channel may not heal after
    /// etcd restarts).
    async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Records whether the last exchange with etcd worked; logs changes once.
    pub fn mark(&self, result: Result<(), &str>) {
        let mut health = self.health.lock().expect("etcd health lock");
        match result {
            Ok(()) => {
                if !health.connected {
                    tracing::info!(endpoints = ?self.endpoints, "etcd is reachable");
                }
                health.connected = true;
                health.last_error = None;
            }
            Err(e) => {
                if health.connected {
                    tracing::warn!(
                        endpoints = ?self.endpoints,
                        "etcd is unreachable; serving from the last known state: {e}"
                    );
                    health.since = Instant::now();
                }
                health.connected = false;
                health.last_error = Some(e.to_owned());
            }
        }
    }

    /// Whether etcd is reachable, and since when it is not.
    pub fn status(&self) -> EtcdStatus {
        let health = self.health.lock().expect("etcd health lock");
        EtcdStatus {
            connected: health.connected,
            last_error: (!health.connected)
                .then(|| health.last_error.clone())
                .flatten(),
            disconnected_for_s: (!health.connected).then(|| health.since.elapsed().as_secs()),
        }
    }

    /// Runs an etcd call, recording failure as unreachability.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let result = match self.client().await {
            Ok(client) => f(client).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.mark(Ok(())),
            Err(e) => self.mark(Err(e)),
        }
        result
    }
}

/// What [`mirror`] keeps current.
pub trait Mirror: Send + Sync {
    /// Everything under the prefix now (key without the prefix, value, mod revision).
    fn reset(&self, entries: Vec<(String, Vec<u8>, i64)>);
    /// One change: `Some(value)` for a put, `None` for a delete (or an expired lease).
    fn change(&self, key: &str, value: Option<&[u8]>, revision: i64);
    /// etcd became reachable or unreachable.
    fn connected(&self, _connected: bool) {}
}

/// Keeps `sink` equal to what etcd holds under `prefix` until shutdown.
pub async fn mirror(
    conn: Arc<EtcdConnection>,
    prefix: String,
    sink: Arc<dyn Mirror>,
    shutdown: CancellationToken,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let round = sync_and_watch(&conn, &prefix, &*sink);
        let error = tokio::select! {
            () = shutdown.cancelled() => return,
            e = round => e,
        };
        conn.mark(Err(&error));
        sink.connected(false);
        conn.reset().await;
        // A round that ran a while (it synced and watched) starts the back-off over.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One round: read everything under the prefix, then apply watch events until an error.
async fn sync_and_watch(conn: &EtcdConnection, prefix: &str, sink: &dyn Mirror) -> String {
    let mut client = match conn.client().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let all = match client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(r) => r,
        Err(e) => return format!("reading {prefix}: {e}"),
    };
    let revision = all.header().map_or(0, |h| h.revision());
    let key_of = |key: &[u8]| {
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let entries = all
        .kvs()
        .iter()
        .filter_map(|kv| Some((key_of(kv.key())?, kv.value().to_vec(), kv.mod_revision())))
        .collect();
    sink.reset(entries);
    conn.mark(Ok(()));
    sink.connected(true);

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = match client.watch(prefix, Some(options)).await {
        Ok(s) => s,
        Err(e) => return format!("watching {prefix}: {e}"),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "the watch stream ended".into(),
            Err(e) => return format!("watching {prefix}: {e}"),
        };
        if response.canceled() {
            return format!("the watch was canceled: {}", response.cancel_reason());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = key_of(kv.key()) else {
                continue;
            };
            let value = (event.event_type() == EventType::Put).then(|| kv.value());
            sink.change(&key, value, kv.mod_revision());
        }
    }
}
