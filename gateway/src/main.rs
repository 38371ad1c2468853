//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sluice::Gateway;
use sluice::config::{Config, LogFormat};

// mimalloc: the proxy path allocates small, short-lived buffers on every request; measured
// faster than the system allocator for it (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: an API gateway whose request plugins are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. Without --config, serves the embedded default: a demo upstream on
    /// 127.0.0.1:9000 behind the gateway on 127.0.0.1:8080 (try `curl localhost:8080/demo/`).
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Validate the config and exit without serving.
        #[arg(long)]
        check: bool,
        /// Log format; overrides `log.format` in the config.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a config file and exit: 0 when valid, 1 with one line per problem otherwise.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with the cluster configuration on etcd (nodes with `[cluster]` follow it).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate FILE as every node will, then write it to etcd if the document did not change
    /// since it was read (compare-and-swap on its revision). Prints the new revision.
    Push {
        /// The cluster configuration (routes, services, resolver, plugin settings).
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print the cluster configuration on etcd (its revision goes to stderr).
    Get {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show what pushing FILE would change: a unified line diff from etcd to FILE.
    Diff {
        /// The cluster configuration to compare.
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// etcd client endpoints (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// The nodes' `[cluster] prefix`; the document is at PREFIX + "config".
    #[arg(long, default_value = sluice::cluster::DEFAULT_PREFIX)]
    prefix: String,
    /// etcd user as NAME:PASSWORD, when etcd has authentication on.
    #[arg(long)]
    user: Option<String>,
    /// Connect over TLS, verifying etcd's certificate against these CA certificates (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd with client-certificate authentication.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TargetArgs {
    fn target(self) -> sluice::cluster::cli::Target {
        sluice::cluster::cli::Target {
            endpoints: self.endpoints,
            prefix: self.prefix,
            user: self.user.map(|u| match u.split_once(':') {
                Some((name, password)) => (name.to_owned(), password.to_owned()),
                None => (u, String::new()),
            }),
            tls: self.tls_ca.map(|ca| sluice::etcd::EtcdTls {
                ca,
                cert: self.tls_cert,
                key: self.tls_key,
            }),
        }
    }
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Check a plugin file as the gateway would load it (header, compile, world, `init` with
    /// the NAME.toml beside it): exit 0 and what it imports and exports, or 1 and the reason.
    Check {
        /// The plugin file (a WebAssembly component).
        file: PathBuf,
    },
    /// Write a new plugin project that builds as generated: source, build script or manifest,
    /// the WIT, a config, and a README with the commands to build, deploy and try it.
    New {
        /// The plugin's name (lower-case letters, digits, `-`): also its file and route name.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: sluice::scaffold::Lang,
        /// Where to create the `NAME/` directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check(Some(file)),
        Command::Run {
            config,
            check: true,
            ..
        } => check(config),
        Command::Run {
            config,
            check: false,
            log_format,
        } => run(config, log_format),
        Command::Plugin(PluginCommand::Check { file }) => check_plugin(&file),
        Command::Config(command) => config_command(command),
        Command::Plugin(PluginCommand::New { name, lang, dir }) => {
            match sluice::scaffold::new_plugin(&name, lang, &dir) {
                Ok(path) => {
                    println!("created {}", path.display());
                    println!(
                        "next: see {}/README.md (build, drop into the plugin directory, curl)",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice plugin new: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_command(command: ConfigCommand) -> ExitCode {
    use sluice::cluster::cli;
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        match command {
            ConfigCommand::Push { file, target } => {
                let target = target.target();
                let (before, after) = cli::push(&target, &file).await?;
                println!(
                    "pushed {} to {} (revision {before} -> {after})",
                    file.display(),
                    target.key()
                );
                Ok(())
            }
            ConfigCommand::Get { target } => {
                let target = target.target();
                match target.get().await? {
                    (revision, Some(text)) => {
                        eprintln!("# {} at revision {revision}", target.key());
                        print!("{text}");
                        Ok(())
                    }
                    (_, None) => Err(format!("no cluster configuration at {}", target.key())),
                }
            }
            ConfigCommand::Diff { file, target } => {
                let diff = cli::diff(&target.target(), &file).await?;
                if diff.is_empty() {
                    println!("no changes");
                } else {
                    print!("{diff}");
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice config: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: Option<PathBuf>) -> Result<Config, ExitCode> {
    match file {
        None => Ok(Config::embedded_default()),
        Some(path) => Config::load(&path).map_err(|errors| {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }),
    }
}

fn check(file: Option<PathBuf>) -> ExitCode {
    let name = file
        .as_ref()
        .map_or("<embedded default>".into(), |f| f.display().to_string());
    match load(file) {
        Ok(config) => {
            println!(
                "{name}: ok ({} routes, {} services)",
                config.routes.len(),
                config.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(file: Option<PathBuf>, log_format: Option<LogFormat>) -> ExitCode {
    let mut config = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Ok(list) = std::env::var(sluice::plugin::extra::ENV) {
        match sluice::plugin::extra::parse_list(&list) {
            Ok(files) => config.plugins.files = files,
            Err(e) => {
                eprintln!("sluice: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    sluice::logging::init(log_format.unwrap_or(config.log.format), &config.log.level);
    // The control runtime runs the admin listener and background work; the data plane runs
    // on its own worker threads (see `server`).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).thread_name("sluice-control");
    let runtime = match build_runtime(builder) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("sluice: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        sluice::server::shutdown_signal().await;
        tracing::info!("shutdown requested; finishing requests in flight");
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn build_runtime(
    mut builder: tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("sluice: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn check_plugin(file: &std::path::Path) -> ExitCode {
    let mut config = Config::default();
    // A throw-away runtime: no plugin directory, no compile cache.
    config.plugins.cache_dir = Some(PathBuf::new());
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let metrics = sluice::metrics::Metrics::new();
        let plugins = match sluice::plugin::runtime(&config, metrics.plugins.clone()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        match plugins.check(file).await {
            Ok(check) => {
                println!(
                    "{}: ok, a {} component",
                    file.display(),
                    check.contract.world()
                );
                println!("  contract: {}", check.contract.version());
                let hooks: Vec<&str> = [
                    (check.hooks.on_request, "on-request"),
                    (check.hooks.on_response, "on-response"),
                ]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect();
                // A plugin may declare none (e.g. `tracing` on a gateway without [telemetry]).
                let hooks = if hooks.is_empty() {
                    "none: the gateway never calls it with this configuration".to_owned()
                } else {
                    hooks.join(", ")
                };
                println!("  hooks: {hooks}");
                println!("  exports: {}", check.exports.join(", "));
                // Top-level type imports (`request`, `response-head`) are not interfaces.
                let interfaces: Vec<&str> = check
                    .imports
                    .iter()
                    .map(String::as_str)
                    .filter(|i| i.contains(':'))
                    .collect();
                println!("  imports: {}", interfaces.join(", "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        }
    })
}
