//! Times PAM transactions run straight through the proxy's PAM pool (no LDAP): the
//! baseline that `bench/bind-latency.sh` compares proxy PAM binds with.
//!
//! Usage (under pam_wrapper, as bench/bind-latency.sh runs it):
//!   pam-latency SERVICE USER PASSWORD COUNT

use ldap_pam_proxy::pam_pool::{PamOutcome, PamPool, PamRequest, TicketResult};
use ldap_pam_proxy::secret::Password;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, user, password, count] = &args[..] else {
        eprintln!("usage: pam-latency SERVICE USER PASSWORD COUNT");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let pool = PamPool::new(1, 1).expect("PAM pool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut times: Vec<Duration> = runtime.block_on(async {
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let request = PamRequest {
                service: service.clone(),
                identity: user.clone(),
                password: Password::from_vec(password.as_bytes().to_vec()),
                rhost: Some("127.0.0.1".into()),
                passcode_delimiter: None,
            };
            let start = Instant::now();
            let ticket = pool
                .submit(request, Duration::from_secs(30))
                .expect("submit");
            let result = ticket.wait().await;
            times.push(start.elapsed());
            assert_eq!(result, TicketResult::Completed(PamOutcome::Success));
        }
        times
    });
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
    println!(
        "transactions={count} mean={mean:.2}ms p50={:.2}ms p95={:.2}ms",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 95 / 100])
    );
}
