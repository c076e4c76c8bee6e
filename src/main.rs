//! The `ldap-pam-proxy` command: runs the proxy and the administrators' tools.

// One call to glibc, in `give_back_memory`; everything else, and the whole library, is
// safe code (`#![forbid(unsafe_code)]` in lib.rs).
#![deny(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ldap_pam_proxy::backend::{Backends, ProbeLinks};
use ldap_pam_proxy::config::Config;
use ldap_pam_proxy::context::{config_id, Shared};
use ldap_pam_proxy::dircheck::{self, DirCheckError};
use ldap_pam_proxy::{duo, metrics, server};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "LDAP proxy that authenticates simple binds through PAM"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 when valid, 1 with the errors otherwise.
    ///
    /// Also checks that every route's PAM service file exists (in $PAM_WRAPPER_SERVICE_DIR
    /// when PAM_WRAPPER=1, else /etc/pam.d or /usr/lib/pam.d), that pam_duo in those
    /// services cannot fail open, and warns about readable secrets.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Also ask the directory: configured suffixes, the service account's rights on
        /// the attributes the routes need, and password SASL mechanisms it advertises.
        #[arg(long)]
        live: bool,
    },
    /// Turn a 389 DS "PAM Pass Through Auth" plugin configuration (LDIF) into routes.
    ///
    /// Prints [bind] and [[route]] tables (TOML) on stdout, in 389's evaluation order,
    /// and on stderr what could not be carried over as 389 had it.
    #[command(name = "import-389")]
    Import389 {
        /// LDIF holding cn=PAM Pass Through Auth,cn=plugins,cn=config and the entries
        /// below it (an ldapsearch export of that subtree, or dse.ldif).
        file: PathBuf,
    },
    /// Show what the proxy would do with a simple bind as DN, without authenticating.
    ///
    /// Asks the directory (as the service account) which routes the entry matches, and
    /// prints the scope, route, PAM service, identities, lock status and decision.
    Explain {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The bind DN.
        dn: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config, cli.log_format),
        Command::CheckConfig { file, live } => {
            let _log = init_logging(cli.log_format, "warn");
            check_config(&file, live)
        }
        Command::Import389 { file } => import_389(&file),
        Command::Explain { config, dn } => {
            let _log = init_logging(cli.log_format, "warn");
            explain(&config, &dn)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ldap-pam-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: warnings and errors on stderr, `FILE: OK` on stdout when valid.
fn check_config(file: &std::path::Path, live: bool) -> anyhow::Result<()> {
    let mut report = ldap_pam_proxy::check::check_config(file);
    // The directory is asked only about a configuration that loads.
    if live && report.ok() {
        let config = Config::load(file)?;
        let directory = ldap_pam_proxy::check::check_live(&config);
        report.errors.extend(directory.errors);
        report.warnings.extend(directory.warnings);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if report.ok() {
        println!("{}: OK", file.display());
        return Ok(());
    }
    for e in &report.errors {
        eprintln!("{e}");
    }
    anyhow::bail!("{}: {} error(s)", file.display(), report.errors.len())
}

/// `import-389`: the TOML on stdout, warnings on stderr.
fn import_389(file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let imported = ldap_pam_proxy::import389::import_389(&text, &file.display().to_string())?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", imported.toml);
    Ok(())
}

/// `explain`: one fact per line on stdout.
fn explain(config: &std::path::Path, dn: &str) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    for line in ldap_pam_proxy::explain::explain_blocking(&config, dn)? {
        println!("{line}");
    }
    Ok(())
}

/// Asks glibc's allocator to return the free pages of every arena to the system, after a
/// spike of connections has gone: glibc gives back only what is free at the top of its
/// heap, so the memory of thousands of ended sessions otherwise stays resident for good
/// (measured: 50-63 MiB after 9,900 clients had left, 12 MiB before they came).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn give_back_memory() {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc locks each
    // arena while it trims it.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    tracing::debug!(released, "allocator trimmed after a spike of connections");
}

/// Other allocators return freed memory themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_memory() {}

/// Logs to stderr at `level` (an EnvFilter directive), unless RUST_LOG says otherwise.
/// Lines are written by a thread of their own, so a session that logs (a bind line each)
/// never waits for the write; none is dropped (a full queue makes the logger wait). The
/// guard flushes what is queued when dropped: keep it until the end.
fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    // ldap3_proto warns about every response control it cannot decode; the directory
    // sends one (Get Effective Rights) with each answer to the proxy's rights check.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},ldap3_proto::control=error"))
    });
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

fn run(path: &std::path::Path, format: LogFormat) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let _log = init_logging(format, &config.log_level);
    let runtime = if config.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.runtime.worker_threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;

    runtime.block_on(async {
        // The start-up checks and the proxy share what they learn about backends.
        let backends = Arc::new(Backends::default());
        ldap_pam_proxy::bind::check_suffixes(&config, &backends)
            .await
            .map_err(anyhow::Error::msg)?;
        duo::apply(&config).map_err(anyhow::Error::msg)?;
        if let Some(w) = ldap_pam_proxy::bind::forward_sasl_warning(&config) {
            tracing::warn!("{w}");
        }
        // A directory that answers with a problem stops the start; one that cannot be
        // asked does not (the proxy must start while the directory is down).
        let pending = server::directory_outcome(dircheck::run(&config, &backends).await)
            .map_err(anyhow::Error::msg)?;
        let listeners = server::bind(&config).await?;
        let shared = Arc::new(
            Shared::new(config, path.to_owned(), backends).context("cannot start the proxy")?,
        );
        shared
            .health
            .set_directory(config_id(&shared.config()), pending);
        // Handlers go in before the proxy says it listens, so a signal sent from then on
        // is never the default action (SIGHUP would end the process).
        let signals = Signals::install().context("cannot install signal handlers")?;
        if let Some(addr) = shared.config().metrics_listen {
            start_metrics(addr, &shared).await?;
        }
        // With or without metrics: it also keeps dead backends out of the way of new
        // connections, and brings a restarted one back. Its first look is taken before
        // the proxy says it listens: /readyz is right from the first request, and the
        // connection it keeps to each backend is there from the start.
        let mut links = ProbeLinks::new();
        probe_backends(&shared, &mut links).await;
        tokio::spawn(watch_directory(Arc::clone(&shared), links));
        let shutdown = CancellationToken::new();
        let local = listeners
            .plain_addr()
            .context("listening socket has no address")?;
        tracing::info!(address = %local, "listening");
        if let Some(ldaps) = listeners.ldaps_addr() {
            let ldaps = ldaps.context("LDAPS listening socket has no address")?;
            tracing::info!(ldaps = %ldaps, "LDAPS listening");
        }
        tokio::spawn(signals.run(Arc::clone(&shared), shutdown.clone()));
        server::serve(listeners, shared, shutdown, give_back_memory).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`, and watches the backend for them.
async fn start_metrics(addr: SocketAddr, shared: &Arc<Shared>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let bound = listener
        .local_addr()
        .context("metrics socket has no address")?;
    let handle = metrics::install().map_err(anyhow::Error::msg)?;
    let pool = Arc::clone(shared);
    tokio::spawn(metrics::serve(
        listener,
        handle,
        move || pool.pam.pool().stats(),
        Arc::clone(&shared.health),
    ));
    tracing::info!(metrics = %bound, "metrics listening");
    Ok(())
}

/// Every few seconds: whether each backend answers (a root DSE read), for `/readyz`,
/// the `ldap_pam_proxy_backend_up` gauges and the order new backend connections try
/// them in; and while the directory checks of the configuration in force have not
/// passed, those checks again.
async fn watch_directory(shared: Arc<Shared>, mut links: ProbeLinks) {
    loop {
        if shared.health.directory_problem().is_some() {
            let config = shared.config();
            let id = config_id(&config);
            match dircheck::run(&config, &shared.backends).await {
                Ok(warnings) => {
                    if shared.health.update_directory(id, None) {
                        for w in warnings {
                            tracing::warn!("{w}");
                        }
                        tracing::info!("directory checks passed");
                    }
                }
                Err(DirCheckError::Unreachable(why)) => {
                    shared.health.update_directory(id, Some(why));
                }
                Err(DirCheckError::Failed(why)) => {
                    if shared.health.update_directory(id, Some(why.clone())) {
                        tracing::error!(
                            "directory checks failed: {why}; not ready until they pass (checked again every 5 s)"
                        );
                    }
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        probe_backends(&shared, &mut links).await;
    }
}

/// Reads each backend's root DSE and records who answered (the `/readyz` answer, the
/// gauges, the order new connections try them in).
async fn probe_backends(shared: &Shared, links: &mut ProbeLinks) {
    let probes = shared.backends.probe(&shared.config().backend, links).await;
    shared.health.set_backends(probes);
}

/// The signals the proxy acts on: SIGTERM and SIGINT stop it gracefully, SIGHUP reloads.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads on each SIGHUP; cancels `shutdown` on the first SIGTERM or SIGINT.
    async fn run(mut self, shared: Arc<Shared>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM received");
                    break;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT received");
                    break;
                }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reloading");
                    server::reload(&shared).await;
                }
            }
        }
        shutdown.cancel();
    }
}
