//! Watches the plugin directory and reloads when files change.
//!
//! A file is ready when its writer closed it or when it was renamed into place (the atomic
//! way deploy tools write): those events reload at once. Other changes (a write still going
//! on) are debounced until the directory has been quiet for a moment, so a file is not loaded
//! half-written; if it is anyway, it fails to compile, the old version keeps serving, and the
//! write's final close triggers another reload.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::PluginRuntime;

/// Quiet time after the last in-progress change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// After a "file is ready" event, a short wait gathers its sibling events (a `NAME.toml`
/// written with its `NAME.wasm`).
const SETTLE: Duration = Duration::from_millis(5);

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
                let _ = tx.send(is_ready(&event.kind));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: crate::LOG_TARGET, "plugin directory watch error: {e}")
            }
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: keep it alive as long as this task.
        let _watcher = watcher;
        loop {
            let mut ready = tokio::select! {
                () = shutdown.cancelled() => return,
                event = rx.recv() => match event { Some(ready) => ready, None => return },
            };
            // Wait until the directory is quiet: briefly after a "ready" event, longer
            // while writes are still going on.
            loop {
                let quiet = if ready { SETTLE } else { DEBOUNCE };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(quiet) => break,
                    event = rx.recv() => match event {
                        Some(r) => ready = r,
                        None => return,
                    },
                }
            }
            let report = runtime.reload().await;
            if !report.loaded.is_empty() || !report.unloaded.is_empty() || !report.failed.is_empty()
            {
                tracing::info!(target: crate::LOG_TARGET,
                    loaded = ?report.loaded,
                    unloaded = ?report.unloaded,
                    failed = ?report.failed,
                    "plugin directory changed"
                );
            }
        }
    }))
}

/// Whether the event says a file is complete: closed after writing, renamed into place, or
/// removed.
fn is_ready(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Remove(_)
    )
}

fn is_plugin_file(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm" || e == "toml")
}
