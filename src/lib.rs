//! ldap-pam-proxy: an LDAP proxy in front of 389 DS that authenticates simple BINDs
//! through PAM, choosing the PAM service per user by ordered LDAP filters.
//!
//! A request flows top to bottom through these modules: [`server`] accepts a client,
//! [`session`] reads whole messages ([`frame`], [`message`]) and relays them to the
//! session's [`backend`] connection ([`policy`] decides what a PAM-bound user's requests
//! become), and [`proto`] builds the answers the proxy gives itself.

#![forbid(unsafe_code)]

pub mod backend;
pub mod ber;
pub mod bind;
pub mod bind_request;
pub mod check;
pub mod config;
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
pub mod policy;
pub mod proto;
pub mod secret;
pub mod server;
pub mod session;
pub mod tls;
