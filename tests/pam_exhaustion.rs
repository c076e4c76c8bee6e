//! Pool exhaustion: unauthenticated clients can start PAM transactions for any user with
//! a wrong password. Many of them at once must not deny binds to users with the right
//! password, on other routes or (mostly) on the same one, nor take the proxy out of a
//! balancer's rotation.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::LdapResultCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn routes(pam: &str) -> String {
    format!(
        r#"
[metrics]
listen = "127.0.0.1:0"

[pam]
{pam}

[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false
timeout = "60s"

[[route]]
name = "csu"
filter = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))"
pam_service = "csu"
secure = false
timeout = "60s"
"#
    )
}

#[test]
fn experiment() {
    let victims = Users::create("victim", 200, false);
    let pam = PamSetup::new("alice:alice-pampw:duo\nbob:bob-pampw:duo\ncarol:carol-pampw:duo\ndave:dave-pampw:duo\nerin:erin-pampw:csu\nfrank:frank-pampw:csu\n");
    pam.set_duo_delay(2);
    let proxy = Proxy::with_pam(&pam, &routes(""));
    let t0 = Instant::now();
    let mut attackers: Vec<RawClient> = victims
        .uids
        .iter()
        .map(|u| {
            let mut c = RawClient::connect_from("127.0.0.66".parse().unwrap(), proxy.addr);
            c.send(bind_request(1, &victims.dn(u), "wrong"));
            c
        })
        .collect();
    eprintln!("sent 200 in {:?}", t0.elapsed());
    assert!(eventually(Duration::from_secs(20), || pam.pushes().len() >= 60));
    eprintln!("pushes {} at {:?}", pam.pushes().len(), t0.elapsed());
    let tally = Mutex::new(Tally::default());
    timed(&tally, || {
        let mut c = start_bind_from(&proxy, "127.0.0.7", "erin", "erin-pampw");
        match bind_result(&mut c) {
            LdapResultCode::Success => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("{}", tally.lock().unwrap().summary("csu"));
    let duo = Mutex::new(Tally::default());
    timed(&duo, || {
        let mut c = start_bind_from(&proxy, "127.0.0.8", "alice", "alice-pampw");
        match bind_result(&mut c) {
            LdapResultCode::Success => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("{}", duo.lock().unwrap().summary("duo"));
    eprintln!("readyz {:?}", proxy.http_get("/readyz"));
    let mut codes = std::collections::BTreeMap::new();
    for c in &mut attackers {
        *codes.entry(format!("{:?}", bind_result(c))).or_insert(0) += 1;
    }
    eprintln!("attackers {codes:?} at {:?}", t0.elapsed());
}
