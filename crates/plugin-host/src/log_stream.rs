//! Plugin stdout/stderr, written line by line into the gateway log with the plugin's name.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The target of the runtime's log events: what it was as the gateway's `plugin` module, so
/// filters such as `sluice=debug` or `sluice::plugin=warn` keep selecting them. (Plugins'
/// own log lines use it too.)
pub(crate) const LOG_TARGET: &str = "sluice::plugin";

/// Longest line kept; the rest of an over-long line is cut.
const MAX_LINE: usize = 4096;

/// A WASI output stream that logs each line.
#[derive(Debug, Clone)]
pub struct PluginLogStream {
    plugin: Arc<str>,
    stream: &'static str,
}

impl PluginLogStream {
    /// A stream for `plugin`'s `stream` (`stdout` or `stderr`).
    pub fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        Self { plugin, stream }
    }
}

impl IsTerminal for PluginLogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginLogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            target: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    target: PluginLogStream,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        tracing::info!(target: "sluice::plugin", plugin = &*self.target.plugin, stream = self.target.stream, "{text}");
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}
