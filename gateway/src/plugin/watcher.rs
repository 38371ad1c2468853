//! Watches the plugin directory and reloads when files change. Events are debounced: an
//! editor or `cp` produces several events per save, and a file still being written must not
//! be loaded half-way (if it is, it fails to compile and the old version keeps serving; the
//! write's last event triggers another reload).

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::PluginRuntime;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Starts watching `runtime.dir()`. The watch ends when `shutdown` is cancelled.
pub fn spawn(
    runtime: Arc<PluginRuntime>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let Some(dir) = runtime.dir().map(|d| d.to_owned()) else {
        anyhow::bail!("no plugin directory to watch");
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.paths.iter().any(|p| is_plugin_file(p)) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("plugin directory watch error: {e}"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: keep it alive as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Debounce: wait until the directory has been quiet for a moment.
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    _ = rx.recv() => continue,
                }
            }
            let report = runtime.reload().await;
            if !report.loaded.is_empty() || !report.unloaded.is_empty() || !report.failed.is_empty()
            {
                tracing::info!(
                    loaded = ?report.loaded,
                    unloaded = ?report.unloaded,
                    failed = ?report.failed,
                    "plugin directory changed"
                );
            }
        }
    }))
}

fn is_plugin_file(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm" || e == "toml")
}
