#!/usr/bin/env bash
# PAM-bind latency through the proxy against the same PAM transaction run directly
# (the proxy's PAM pool alone, no LDAP), and a directory-checked bind straight to 389,
# all in one run on this machine. A fast password service (pam_matrix), so what is left
# is the proxy's own cost: frame, route lookup (pipelined base searches), PAM pool
# hand-off, service-account connection, reply.
#   bench/bind-latency.sh [COUNT]        (default 300 binds each)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
count=${1:-300}
scripts/install-deps.sh >/dev/null
cargo build --release --bin ldap-pam-proxy --example pam-latency 2>&1 | tail -1
target=$(cargo metadata --format-version 1 --no-deps | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d /tmp/lpp-latency.XXXXXX)
name="lpplat$$"
proxy_pid=""
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null || true
    tests/ds/ds.sh remove "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000)); pport=$((port + 1))
tests/ds/ds.sh create "$name" "$port" "$work/ds" >/dev/null 2>&1
# shellcheck disable=SC1091
. "$work/ds/ds.env"

mkdir -p "$work/pam" "$work/state"
echo "erin:erin-pampw:csu" >"$work/state/passdb"
sed -e "s#@PASSDB@#$work/state/passdb#g; s#@STATE@#$work/state#g; s#@SCRIPTS@#$PWD/tests/pam#g" \
    pam.d/test/csu >"$work/pam/csu"
pamenv=(LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libpam_wrapper.so PAM_WRAPPER=1 "PAM_WRAPPER_SERVICE_DIR=$work/pam")

cat >"$work/proxy.toml" <<TOML
[listen]
address = "127.0.0.1:$pport"
[backend]
uris = ["$DS_URI"]
service_dn = "$DS_SERVICE_DN"
service_password_file = "$DS_SERVICE_PW_FILE"
[pam]
# Every bind runs PAM: no joining of identical binds, no per-user limit.
coalesce_grace = "0s"
max_attempts_per_minute = 1000000
[[route]]
name = "csu"
filter = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))"
pam_service = "csu"
secure = false
TOML
env "${pamenv[@]}" RUST_LOG=warn "$target/release/ldap-pam-proxy" run --config "$work/proxy.toml" 2>/dev/null &
proxy_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break; sleep 0.1; done

dn="uid=erin,ou=People,$DS_SUFFIX"
echo "count: $count sequential binds each (warm-up of 20 first)"
bench/bind_rtt.py 127.0.0.1 "$pport" "$dn" erin-pampw 20 >/dev/null
printf '%-44s %s\n' "PAM bind through the proxy (csu route):" "$(bench/bind_rtt.py 127.0.0.1 "$pport" "$dn" erin-pampw "$count")"
printf '%-44s %s\n' "same PAM transaction, pool only (no LDAP):" "$(env "${pamenv[@]}" "$target/release/examples/pam-latency" csu erin erin-pampw "$count" 2>/dev/null)"
printf '%-44s %s\n' "directory bind straight to 389:" "$(bench/bind_rtt.py 127.0.0.1 "$port" "$dn" erin-dirpw "$count")"
