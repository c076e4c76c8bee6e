//! Route lookups: as the service account, read a bind DN's entry and ask the directory
//! which route filters it matches. The directory evaluates the filters, so matching
//! follows exactly its rules (syntaxes, matching rules, ACIs).
//!
//! One lookup makes a base search for the entry (existence, `nsAccountLock`, the identity
//! attributes), then one base search per candidate route filter, on a connection from a
//! small shared pool of service-bound connections.

use crate::backend::{self, BackendStream, Backends, ServiceBindError};
use crate::config::{BackendConfig, Route};
use crate::dn::Dn;
use crate::proto;
use bytes::BytesMut;
use ldap3_proto::proto::{
    LdapDerefAliases, LdapFilter, LdapMsg, LdapOp, LdapResultCode, LdapSearchRequest,
    LdapSearchScope,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, SemaphorePermit};

/// At most this many lookup connections; more lookups wait for one.
const POOL_SIZE: usize = 4;
/// A lookup the directory does not answer in this time fails (and its connection is dropped).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A bind DN's entry as the directory resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's DN as the directory returned it (its stored spelling), not the
    /// client's.
    pub dn: String,
    /// `nsAccountLock: true`.
    pub locked: bool,
    /// Requested attributes by lower-cased name.
    pub attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    /// The first value of `attr`.
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.attrs
            .get(&attr.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A bind DN's entry, resolved by the directory, and its DN as the proxy reads it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub entry: Entry,
    pub dn: Dn,
}

/// What the directory said about a bind DN: the entry it names, if any, and for each
/// candidate route of that entry (in order) whether its filter matches.
#[derive(Debug, Clone)]
pub struct Facts {
    pub resolved: Option<Resolved>,
    pub matched: Vec<bool>,
}

/// Most bind DNs whose facts are remembered at once.
const CACHE_SIZE: usize = 10_000;

/// Recent facts by bind DN as sent, until their expiry.
#[derive(Default)]
struct FactsCache {
    facts: HashMap<String, (Instant, Facts)>,
}

/// The lookup could not be done; the bind gets unavailable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Connect(#[from] ServiceBindError),
    #[error("directory connection failed during lookup: {0}")]
    Io(String),
    #[error("directory did not answer the lookup within {0:?}")]
    Timeout(Duration),
    #[error("directory refused the lookup: {0}")]
    Refused(String),
}

/// The shared pool of service-bound lookup connections.
pub struct LookupPool {
    idle: Mutex<Vec<Conn>>,
    cache: Mutex<FactsCache>,
    slots: Semaphore,
    /// Where its connections come from.
    backends: Arc<Backends>,
}

struct Conn {
    stream: BackendStream,
    buf: BytesMut,
    next_id: i32,
}

impl LookupPool {
    /// An empty pool whose connections `backends` makes.
    pub fn new(backends: Arc<Backends>) -> Self {
        LookupPool {
            idle: Mutex::new(Vec::new()),
            cache: Mutex::default(),
            slots: Semaphore::new(POOL_SIZE),
            backends,
        }
    }

    /// The facts remembered for `name` (a bind DN as sent), if not expired.
    pub fn cached(&self, name: &str) -> Option<Facts> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .facts
            .get(name)
            .filter(|(expiry, _)| *expiry > Instant::now())
            .map(|(_, facts)| facts.clone())
    }

    /// Remembers `facts` for `name` for `ttl`. When the cache is full, expired facts go;
    /// if that is not enough, these are not remembered.
    pub fn remember(&self, name: &str, facts: Facts, ttl: Duration) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.facts.len() >= CACHE_SIZE {
            cache.facts.retain(|_, (expiry, _)| *expiry > now);
        }
        if cache.facts.len() < CACHE_SIZE {
            cache.facts.insert(name.to_owned(), (now + ttl, facts));
        }
    }

    /// Forgets every remembered fact: a reloaded configuration may ask other questions.
    pub fn forget(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .facts
            .clear();
    }

    /// Where the pool's connections come from: also where a bind that succeeded gets its
    /// service-bound connection.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// A service-bound connection from the pool (or a new one), for one bind's questions.
    pub async fn conn<'p>(&'p self, cfg: &'p BackendConfig) -> Result<LookupConn<'p>, LookupError> {
        let slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| LookupError::Io("lookup pool closed".into()))?;
        let pooled = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        Ok(LookupConn {
            pool: self,
            cfg,
            reused: pooled.is_some(),
            conn: pooled,
            _slot: slot,
        })
    }
}

/// A lookup connection lent to one bind; it goes back to the pool when dropped, unless a
/// question on it failed or was cut short (its stream may hold an answer nobody read).
pub struct LookupConn<'p> {
    pool: &'p LookupPool,
    cfg: &'p BackendConfig,
    conn: Option<Conn>,
    /// `conn` came from the pool: the directory may have closed it since.
    reused: bool,
    _slot: SemaphorePermit<'p>,
}

impl LookupConn<'_> {
    /// Resolves `name` (the client's spelling of a DN) to the entry the directory holds,
    /// reading `nsAccountLock` and `attrs` with it. `Ok(None)` when there is no such entry
    /// (or the service account cannot see it).
    pub async fn entry(
        &mut self,
        name: &str,
        attrs: &[&str],
    ) -> Result<Option<Entry>, LookupError> {
        let mut wanted: Vec<String> = vec!["nsAccountLock".into()];
        wanted.extend(attrs.iter().map(|a| a.to_string()));
        let any = LdapFilter::Present("objectClass".into());
        let found = match self.ask(name, any.clone(), wanted.clone()).await {
            // A pooled connection may have been closed by the directory (idle timeout,
            // restart) since its last use: try once more on a fresh one.
            Err(LookupError::Io(_) | LookupError::Timeout(_)) if self.reused => {
                self.reused = false;
                self.ask(name, any, wanted).await?
            }
            other => other?,
        };
        Ok(found.map(|(dn, attrs)| Entry {
            locked: attrs
                .get("nsaccountlock")
                .is_some_and(|v| v.iter().any(|x| x.eq_ignore_ascii_case("true"))),
            dn,
            attrs,
        }))
    }

    /// For each route in order, whether its filter matches the entry `dn` (a DN the
    /// directory returned). One base search at a time: 389 DS serves a request that
    /// arrives behind another in the same packet only at its next poll wakeup (measured
    /// here: 100–200 ms per pipelined lookup), while a lone base search takes about 0.2 ms.
    pub async fn matches(&mut self, dn: &str, routes: &[&Route]) -> Result<Vec<bool>, LookupError> {
        let mut matched = Vec::with_capacity(routes.len());
        for route in routes {
            let filter = route
                .filter
                .clone()
                .unwrap_or_else(|| LdapFilter::Present("objectClass".into()));
            matched.push(self.ask(dn, filter, vec!["1.1".into()]).await?.is_some());
        }
        Ok(matched)
    }

    /// One base search, bounded by [`LOOKUP_TIMEOUT`]; the connection is kept only when
    /// the answer was read to its end.
    async fn ask(
        &mut self,
        dn: &str,
        filter: LdapFilter,
        attrs: Vec<String>,
    ) -> Result<Option<(String, HashMap<String, Vec<String>>)>, LookupError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                self.reused = false;
                Conn {
                    stream: self.pool.backends.connect_as_service(self.cfg).await?,
                    buf: BytesMut::with_capacity(4096),
                    next_id: 1,
                }
            }
        };
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, conn.base(dn, filter, attrs))
            .await
            .map_err(|_| LookupError::Timeout(LOOKUP_TIMEOUT))?;
        if answer.is_ok() {
            self.conn = Some(conn);
        }
        answer
    }
}

impl Drop for LookupConn<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.idle.lock()) {
            idle.push(conn);
        }
    }
}

impl Conn {
    fn take_id(&mut self) -> i32 {
        let id = self.next_id;
        // messageID 0 is reserved for unsolicited notifications.
        self.next_id = if id == i32::MAX { 2 } else { id + 1 };
        id
    }

    /// A base search of `dn`: the entry's DN and attributes when it matches `filter`,
    /// `None` when it does not match or does not exist.
    async fn base(
        &mut self,
        dn: &str,
        filter: LdapFilter,
        attrs: Vec<String>,
    ) -> Result<Option<(String, HashMap<String, Vec<String>>)>, LookupError> {
        let io = |e: std::io::Error| LookupError::Io(e.to_string());
        let id = self.take_id();
        self.stream
            .write_all(&proto::encode(base_search(id, dn, filter, attrs)))
            .await
            .map_err(io)?;
        let mut found = None;
        loop {
            let msg = backend::read_message(&mut self.stream, &mut self.buf)
                .await
                .map_err(|e| LookupError::Io(e.to_string()))?;
            if msg.msgid != id {
                // Referrals and notices: not something a lookup can use.
                continue;
            }
            match msg.op {
                LdapOp::SearchResultEntry(e) => {
                    let attrs = e
                        .attributes
                        .into_iter()
                        .map(|a| {
                            let values = a
                                .vals
                                .into_iter()
                                .map(|v| String::from_utf8_lossy(&v).into_owned())
                                .collect();
                            (a.atype.to_ascii_lowercase(), values)
                        })
                        .collect();
                    found = Some((e.dn, attrs));
                }
                LdapOp::SearchResultDone(r) => {
                    return match r.code {
                        LdapResultCode::Success => Ok(found),
                        LdapResultCode::NoSuchObject => Ok(None),
                        other => Err(LookupError::Refused(format!(
                            "{}: {}",
                            proto::code_text(&other),
                            crate::logsafe::Untrusted::new(&r.message)
                        ))),
                    };
                }
                _ => {}
            }
        }
    }
}

fn base_search(msgid: i32, dn: &str, filter: LdapFilter, attrs: Vec<String>) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::SearchRequest(LdapSearchRequest {
            base: dn.to_owned(),
            scope: LdapSearchScope::Base,
            aliases: LdapDerefAliases::Never,
            sizelimit: 1,
            timelimit: 10,
            typesonly: false,
            filter,
            attrs,
        }),
    )
}

/// The directory's naming contexts (root DSE `namingContexts`), read anonymously.
pub async fn naming_contexts(
    backends: &Backends,
    cfg: &BackendConfig,
) -> Result<Vec<String>, LookupError> {
    let mut stream = backends
        .connect(cfg)
        .await
        .map_err(|e| LookupError::Connect(e.into()))?;
    let request = proto::encode(base_search(
        1,
        "",
        LdapFilter::Present("objectClass".into()),
        vec!["namingContexts".into()],
    ));
    let run = async {
        stream
            .write_all(&request)
            .await
            .map_err(|e| LookupError::Io(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4096);
        let mut contexts = Vec::new();
        loop {
            let msg = backend::read_message(&mut stream, &mut buf)
                .await
                .map_err(|e| LookupError::Io(e.to_string()))?;
            match msg.op {
                LdapOp::SearchResultEntry(e) => contexts.extend(
                    e.attributes
                        .into_iter()
                        .filter(|a| a.atype.eq_ignore_ascii_case("namingContexts"))
                        .flat_map(|a| a.vals)
                        .map(|v| String::from_utf8_lossy(&v).into_owned()),
                ),
                LdapOp::SearchResultDone(_) => return Ok(contexts),
                _ => {}
            }
        }
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, run)
        .await
        .map_err(|_| LookupError::Timeout(LOOKUP_TIMEOUT))?
}
