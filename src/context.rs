//! The process context: what every session shares and what outlives one configuration —
//! the configuration in force (replaced whole by a reload) and the file it is read from,
//! the route lookup pool, the PAM gate, the proxy's server certificate, the health that
//! `/readyz` reports, and what backend connections remember ([`Backends`]).
//!
//! It sits below [`crate::server`] (which reloads it and runs the listeners) and
//! [`crate::session`] (which reads it), so neither imports the other for it. It is made
//! from parts ([`Shared::from_parts`]): a test can build one over a scripted PAM pool,
//! without PAM threads or certificates; [`Shared::new`] makes the parts of a running
//! proxy (the `run` command calls it).

use crate::backend::Backends;
use crate::config::Config;
use crate::lookup::LookupPool;
use crate::metrics::Health;
use crate::pam_gate::{PamGate, Submit};
use crate::pam_pool::PamPool;
use crate::service_links::ServiceLinks;
use crate::tls::ServerTls;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use tokio_util::sync::CancellationToken;

/// What every session shares. `P` is the PAM pool behind the gate: [`PamPool`] in the
/// proxy, a scripted one in tests.
pub struct Shared<P = PamPool> {
    /// The configuration in force: replaced whole by a reload.
    config: RwLock<Arc<Config>>,
    /// Where the configuration is read from again on SIGHUP.
    path: PathBuf,
    /// Service-bound connections for route lookups.
    pub lookup: LookupPool,
    pub pam: PamGate<P>,
    /// The server certificate for LDAPS and StartTLS; `None` without `[tls]`.
    pub tls: Option<ServerTls>,
    /// What `/readyz` reports: backend reachability and the directory checks.
    pub health: Arc<Health>,
    /// Which backends failed lately and the backend TLS configurations: every backend
    /// connection of the process goes through it.
    pub backends: Arc<Backends>,
    /// Cancelled when the shutdown grace is about to end: binds still waiting for PAM
    /// answer unavailable, so their sessions can end in time.
    pub grace_over: CancellationToken,
    /// The connections bound as the service account that PAM-bound sessions share.
    pub links: ServiceLinks,
}

impl Shared {
    /// The context of a running proxy: loads the TLS certificate and starts the PAM
    /// workers for `config`, read from `path`. `backends` is the one the start-up checks
    /// already used, so what they learnt about unreachable backends carries over.
    ///
    /// # Errors
    /// The certificate does not load, or the PAM pool or gate cannot start.
    pub fn new(config: Config, path: PathBuf, backends: Arc<Backends>) -> std::io::Result<Shared> {
        let tls = match &config.tls {
            Some(t) => Some(ServerTls::load(t).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("TLS certificate: {e}"),
                )
            })?),
            None => None,
        };
        let pool = Arc::new(PamPool::new(config.pam.workers, config.pam.queue)?);
        let pam = PamGate::new(pool, &config.pam, &config.routes)?;
        Ok(Shared::from_parts(config, path, pam, tls, backends))
    }
}

impl<P: Submit> Shared<P> {
    /// A context over parts already made; the lookup pool and health start empty.
    pub fn from_parts(
        config: Config,
        path: PathBuf,
        pam: PamGate<P>,
        tls: Option<ServerTls>,
        backends: Arc<Backends>,
    ) -> Self {
        Shared {
            config: RwLock::new(Arc::new(config)),
            path,
            lookup: LookupPool::new(Arc::clone(&backends)),
            links: ServiceLinks::new(Arc::clone(&backends)),
            pam,
            tls,
            health: Arc::default(),
            backends,
            grace_over: CancellationToken::new(),
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The configuration file, read again on reload.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts `config` in force: sessions take it from their next bind.
    pub fn put_in_force(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        // Facts about bind DNs were asked under the old routes.
        self.lookup.forget();
    }
}

/// Identifies a configuration while it is in force (for [`Health`]): its address, which
/// no other configuration can have while this one is alive.
pub fn config_id(config: &Arc<Config>) -> usize {
    Arc::as_ptr(config) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use crate::pam_gate::Submission;
    use crate::pam_pool::{NotStarted, PamOutcome, PoolError};
    use std::future::Future;

    /// A PAM pool that takes no work: enough for a context whose test never reaches PAM.
    struct NoPool;

    impl Submit for NoPool {
        fn submit(
            &self,
            _: Submission,
        ) -> Result<impl Future<Output = Result<PamOutcome, NotStarted>> + Send + 'static, PoolError>
        {
            Err::<std::future::Ready<Result<PamOutcome, NotStarted>>, _>(PoolError::ShutDown)
        }

        fn set_routes(&self, _: &[Route]) {}
    }

    fn config(level: &str) -> Config {
        Config::parse(
            &format!("[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris = [\"ldap://127.0.0.1:2\"]\n[log]\nlevel = \"{level}\"\n"),
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn builds_from_parts_and_takes_a_new_configuration() {
        let first = config("info");
        let pam = PamGate::new(Arc::new(NoPool), &first.pam, &first.routes).unwrap();
        let shared = Shared::from_parts(
            first,
            PathBuf::from("/nonexistent.toml"),
            pam,
            None,
            Arc::default(),
        );
        let before = shared.config();
        assert_eq!(before.log_level, "info");
        assert_eq!(shared.path(), Path::new("/nonexistent.toml"));
        shared.put_in_force(Arc::new(config("debug")));
        let after = shared.config();
        assert_eq!(after.log_level, "debug");
        assert_ne!(config_id(&before), config_id(&after));
    }
}
