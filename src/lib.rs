//! ldap-pam-proxy: an LDAP proxy in front of 389 DS that authenticates simple BINDs
//! through PAM, choosing the PAM service per user by ordered LDAP filters.
//!
//! How a request flows through the modules (DESIGN §1):
//!
//! ```text
//! client --TCP/TLS--> server: accept, PROXY protocol header (proxy_protocol),
//!                       |     connection slots (slots: cap, per address, idle go
//!                       |     first), one task per client
//!                       |     (context: the configuration in force, lookup pool,
//!                       |      PAM gate, TLS, health, backend registry)
//!                       v
//!                     session: shell (sockets, TLS, timers) around a pure core
//!                       |      (session::state: inputs in, bytes and actions out)
//!                       |   <-- frame: whole messages (BER length via ber,
//!                       |                messageID, protocolOp tag)
//!                       |     message: controls and OIDs, read strictly
//!        +--------------+------------------------------+
//!        | BindRequest (bind_request)                  | any other request
//!        v                                             v
//!   bind::first_look -- not ours (anonymous, SASL,   session::policy: what a PAM-bound user's
//!        |              out of scope) ----------+    request becomes (proxied authz,
//!        | ours                                 |    allow-lists, WhoAmI locally)
//!        v                                      |      |
//!   bind::authenticate                          +----> relay to the session's
//!     lookup: resolve the entry, which               backend connection (backend), or
//!             route filters match                    a PAM-bound session's place on a
//!                                                    shared service connection
//!                                                    (service_links: messageIDs mapped)
//!                                                      |
//!     bind::plan: route, lock, TLS, identity           | responses stream back,
//!     pam_gate: coalescing, attempt budget,            | bytes unchanged (shared:
//!               per-route caps, success cache          | whole, messageID restored)
//!     pam_pool: OS threads, libpam                     |
//!     bind::judge: PAM result -> LDAP result           |
//!        |                                             |
//!        v                                             v
//!   reply (proto: BindResponse) ---------------> client
//! ```
//!
//! Around it: [`config`] reads the file, [`check`], [`dircheck`], [`duo`], [`explain`]
//! and [`import389`] are the administrators' tools, [`metrics`] the endpoint.

#![forbid(unsafe_code)]

pub mod backend;
pub mod ber;
pub mod bind;
pub mod bind_request;
pub mod check;
pub mod config;
pub mod context;
pub mod dircheck;
pub mod dn;
pub mod duo;
pub mod explain;
pub mod filter;
pub mod frame;
pub mod import389;
pub mod logsafe;
pub mod lookup;
pub mod message;
pub mod metrics;
pub mod pam_gate;
pub mod pam_pool;
pub mod pam_service;
pub mod proto;
pub mod proxy_protocol;
pub mod secret;
pub mod server;
pub mod service_links;
pub mod session;
pub mod slots;
pub mod tls;
