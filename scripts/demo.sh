#!/usr/bin/env bash
# ldap-pam-proxy demo on one Debian 12 machine, as root, from any directory:
# a local 389 DS with sample users, two PAM services run under pam_wrapper
# (a simulated Duo push and a password check), and the proxy in front of them.
#
#   scripts/demo.sh [--reset]   # install deps, build, start 389 (created on first use) and
#                               # the proxy on 127.0.0.1:1389 (LDAP + StartTLS) and
#                               # 127.0.0.1:1636 (LDAPS), metrics on 127.0.0.1:9090,
#                               # print what to try.
#                               # Rerunning reuses the 389 instance and restarts the proxy;
#                               # --reset first deletes the instance and all demo state.
#   scripts/demo.sh status      # is the demo running?
#   scripts/demo.sh stop        # stop the proxy and the 389 instance (kept for the next run)
#   scripts/demo.sh remove      # stop both and delete the instance and all demo state
#
# Everything lives in /var/lib/ldap-pam-proxy-demo: ds/ (389 state: ds.env, passwords),
# pam.d/ (the PAM services), pam/ (their data), tls/ (demo CA and the proxy's certificate:
# clients use LDAPTLS_CACERT=tls/ca.crt), ldap-pam-proxy.toml, proxy.pid, proxy.log;
# the 389 instance itself is slapd-lpp-demo (/etc/dirsrv, /var/lib/dirsrv). Nothing in
# /etc/pam.d is touched: the proxy runs with LD_PRELOAD=libpam_wrapper.so, which makes
# its libpam read the PAM services from the demo's own directory.
#
# Demo PAM passwords (pam_matrix password file, not the directory's passwords):
#   duo route (internal users):  alice/alice-duo-pw  bob/bob-duo-pw  carol/carol-duo-pw
#                                dave/dave-duo-pw  (each bind waits DEMO_DUO_DELAY=3 s: the "push")
#   csu route (external users):  erin/erin-csu-pw  frank/frank-csu-pw  grace/grace-csu-pw
# Directory passwords (389's own check, for binds the proxy forwards): <uid>-dirpw.
set -euo pipefail

readonly SELF=demo.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
readonly SCRIPT_DIR REPO_DIR

readonly INSTANCE=lpp-demo
readonly DEMO_DS_PORT=3389   # not DS_PORT: ds.env, sourced below, sets that
readonly PROXY_HOST=127.0.0.1
readonly PROXY_PORT=1389
readonly PROXY_URI="ldap://$PROXY_HOST:$PROXY_PORT"
readonly LDAPS_PORT=1636
readonly LDAPS_URI="ldaps://$PROXY_HOST:$LDAPS_PORT"
readonly METRICS="$PROXY_HOST:9090"
readonly DUO_DELAY=${DEMO_DUO_DELAY:-3}

# Layout
readonly STATE=/var/lib/ldap-pam-proxy-demo
readonly DS_STATE=$STATE/ds                 # tests/ds/ds.sh state: ds.env, service.pw, root.pw
readonly PAM_SERVICES=$STATE/pam.d          # PAM_WRAPPER_SERVICE_DIR: duo, csu
readonly PAM_STATE=$STATE/pam               # passdb, duo-delay, duo-pushes, duo-push.sh
readonly CONFIG=$STATE/ldap-pam-proxy.toml
readonly PIDFILE=$STATE/proxy.pid
readonly LOGFILE=$STATE/proxy.log
readonly TLS_DIR=$STATE/tls                 # ca.crt (trust this), proxy.crt, proxy.key

readonly PAM_WRAPPER_LIB=/usr/lib/x86_64-linux-gnu/libpam_wrapper.so
readonly PAM_MATRIX=/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so
readonly PAM_EXEC=/lib/x86_64-linux-gnu/security/pam_exec.so
readonly DS_SH=$REPO_DIR/tests/ds/ds.sh

die() { echo "$SELF: error: $*" >&2; exit 1; }
log() { echo "$SELF: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
    exit 2
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and runs a system-wide 389 DS instance)"
}

# cargo from rustup is often installed but not on root's PATH in a fresh shell.
cargo_on_path() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
    fi
}

# ---- the proxy process -------------------------------------------------------------

# Pid of the demo proxy when it runs: the pid file's process, if its command line
# names the demo config (so a recycled pid is never taken for ours).
proxy_pid() {
    local pid
    [[ -r $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$CONFIG" || return 1
    echo "$pid"
}

stop_proxy() {
    local pid _
    if ! pid=$(proxy_pid); then
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    # The demo config sets limits.shutdown_grace = 5s.
    for _ in $(seq 100); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "proxy (pid $pid) still running 10 s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -d /proc/$pid ]] || break
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
    log "proxy stopped (pid $pid)"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

who_listens() {
    ss -ltnpH "sport = :$1" 2>/dev/null | sed 's/^/    /' || true
}

proxy_port_free() {
    if port_open "$PROXY_HOST" "$PROXY_PORT"; then
        echo "$SELF: error: port $PROXY_PORT on $PROXY_HOST is already in use, not by the demo proxy:" >&2
        who_listens "$PROXY_PORT" >&2
        exit 1
    fi
}

start_proxy() {
    local bin=$1
    proxy_port_free
    {
        echo
        echo "==== $(date -Is) $SELF: starting $bin"
    } >>"$LOGFILE"
    # setsid: no controlling terminal, so closing the terminal does not stop the proxy.
    # env sets LD_PRELOAD for the proxy alone (not for setsid), so only the proxy makes a
    # pam_wrapper copy of the services (/tmp/pam.*, removed when it exits).
    setsid env \
        LD_PRELOAD="$PAM_WRAPPER_LIB" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$PAM_SERVICES" \
        RUST_LOG="${RUST_LOG:-info}" \
        "$bin" run --config "$CONFIG" </dev/null >>"$LOGFILE" 2>&1 &
    echo "$!" >"$PIDFILE"
    local t0=$SECONDS
    until timeout 3 ldapsearch -x -o nettimeout=2 -H "$PROXY_URI" -b '' -s base -LLL 1.1 >/dev/null 2>&1; do
        if ! proxy_pid >/dev/null; then
            echo "---- last lines of $LOGFILE ----" >&2
            tail -n 20 "$LOGFILE" >&2
            echo "----" >&2
            rm -f "$PIDFILE"
            die "the proxy exited during startup (log above)"
        fi
        if (( SECONDS - t0 >= 20 )); then
            tail -n 20 "$LOGFILE" >&2
            stop_proxy
            die "the proxy did not answer a rootDSE search on $PROXY_URI within 20 s (log: $LOGFILE)"
        fi
        sleep 0.2
    done
    log "proxy running (pid $(<"$PIDFILE")), answering on $PROXY_URI; log: $LOGFILE"
}

# ---- setup steps -----------------------------------------------------------------

build() {
    log "building the release binary (cargo build --release; a first build takes a few minutes)"
    (cd "$REPO_DIR" && cargo build --release) || die "cargo build --release failed"
    # Where cargo put it (honours CARGO_TARGET_DIR and .cargo/config).
    local target
    target=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps \
        | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') \
        || die "cargo metadata failed: cannot find the target directory"
    BIN=$target/release/ldap-pam-proxy
    [[ -x $BIN ]] || die "$BIN missing after cargo build --release"
}

# Creates the 389 instance, or starts the existing one.
directory() {
    local inst_dir=/etc/dirsrv/slapd-$INSTANCE
    if [[ -e $inst_dir ]]; then
        [[ -r $DS_STATE/ds.env ]] \
            || die "389 instance slapd-$INSTANCE exists but $DS_STATE/ds.env does not (not made by this script?): rerun with --reset to recreate it"
        # shellcheck disable=SC1091
        (. "$DS_STATE/ds.env"; [[ $DS_PORT == "$DEMO_DS_PORT" ]]) \
            || die "389 instance slapd-$INSTANCE was made for another port than $DEMO_DS_PORT: rerun with --reset"
        log "reusing 389 instance slapd-$INSTANCE"
        "$DS_SH" start "$INSTANCE"
    else
        rm -rf "$DS_STATE"
        install -d -m 0700 "$DS_STATE"
        log "creating 389 instance slapd-$INSTANCE on 127.0.0.1:$DEMO_DS_PORT with the sample users (about 10 s)"
        "$DS_SH" create "$INSTANCE" "$DEMO_DS_PORT" "$DS_STATE"
    fi
}

# The two demo PAM services, from the pam.d/test templates, and their data.
pam_services() {
    local f
    for f in "$PAM_WRAPPER_LIB" "$PAM_MATRIX" "$PAM_EXEC"; do
        [[ -e $f ]] || die "$f missing: run scripts/install-deps.sh (packages libpam-wrapper, libpam-modules)"
    done
    install -d -m 0755 "$PAM_SERVICES" "$PAM_STATE"
    install -m 0755 "$REPO_DIR/tests/pam/duo-push.sh" "$PAM_STATE/duo-push.sh"
    # pam_matrix: user:password:service. Its account check passes only for the service
    # named in the third field, so a duo user cannot log in through csu and vice versa.
    (
        umask 077
        cat >"$PAM_STATE/passdb" <<'EOF'
alice:alice-duo-pw:duo
bob:bob-duo-pw:duo
carol:carol-duo-pw:duo
dave:dave-duo-pw:duo
lockeduser:lockeduser-duo-pw:duo
erin:erin-csu-pw:csu
frank:frank-csu-pw:csu
grace:grace-csu-pw:csu
EOF
    )
    # Seconds the simulated push waits before the password decision.
    echo "$DUO_DELAY" >"$PAM_STATE/duo-delay"
    touch "$PAM_STATE/duo-pushes"
    local svc text
    for svc in duo csu; do
        [[ -r $REPO_DIR/pam.d/test/$svc ]] || die "template $REPO_DIR/pam.d/test/$svc missing"
        text=$(<"$REPO_DIR/pam.d/test/$svc")
        text=${text//@PASSDB@/"$PAM_STATE/passdb"}
        text=${text//@STATE@/"$PAM_STATE"}
        text=${text//@SCRIPTS@/"$PAM_STATE"}
        printf '%s\n' "$text" >"$PAM_SERVICES/$svc"
    done
}

# A demo CA and a certificate for the proxy (127.0.0.1, localhost), made once.
certificates() {
    [[ -s $TLS_DIR/proxy.crt && -s $TLS_DIR/proxy.key && -s $TLS_DIR/ca.crt ]] && return 0
    install -d -m 0700 "$TLS_DIR"
    log "making a demo CA and the proxy's certificate in $TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=ldap-pam-proxy demo CA" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" 2>/dev/null \
        || die "openssl could not make the demo CA"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS_DIR/proxy.key" -out "$TLS_DIR/proxy.csr" 2>/dev/null \
        || die "openssl could not make the proxy's key"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' >"$TLS_DIR/ext.cnf"
    openssl x509 -req -in "$TLS_DIR/proxy.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 825 -extfile "$TLS_DIR/ext.cnf" -out "$TLS_DIR/proxy.crt" 2>/dev/null \
        || die "openssl could not sign the proxy's certificate"
    chmod 0644 "$TLS_DIR/ca.crt"
}

write_config() {
    # shellcheck disable=SC1091
    . "$DS_STATE/ds.env"
    cat >"$CONFIG" <<EOF
# ldap-pam-proxy demo configuration, written by scripts/demo.sh on every run.
# The commented production example is config/ldap-pam-proxy.toml in the repository.

[listen]
address = "$PROXY_HOST:$PROXY_PORT"
ldaps_address = "$PROXY_HOST:$LDAPS_PORT"

[tls]
certificate = "$TLS_DIR/proxy.crt"
key = "$TLS_DIR/proxy.key"

[backend]
uris = ["$DS_URI"]
connect_timeout = "2s"
# The proxy's own directory account (made by tests/ds/ds.sh from tests/data/sample.ldif).
service_dn = "$DS_SERVICE_DN"
service_password_file = "$DS_SERVICE_PW_FILE"
root_dn = "$DS_ROOT_DN"

[bind]
exclude_suffixes = ["cn=config"]

# The routes of the 389 "PAM Pass Through Auth" setup this replaces
# (examples/389-pam-passthru.ldif): internal users get the Duo service,
# users whose home directory is /home/<uid>@<institution> their home institution's.
# Both routes are secure (the default): a PAM bind needs LDAPS or StartTLS, and one in
# clear text gets confidentialityRequired (13) before any push is sent.
[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
id_map = ["rdn", "entry"]
id_attr = "uid"
timeout = "30s"

[[route]]
name = "csu"
filter = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))"
pam_service = "csu"
id_map = ["rdn", "entry"]
id_attr = "uid"
timeout = "30s"

[pam]
workers = 8
queue = 64

[limits]
shutdown_grace = "5s"

[metrics]
listen = "$METRICS"
EOF
    # The proxy runs PAM under pam_wrapper: check-config must look for its services where
    # pam_wrapper does, and reads PAM_WRAPPER_SERVICE_DIR only with PAM_WRAPPER=1, as
    # pam_wrapper itself.
    PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$PAM_SERVICES" "$BIN" check-config "$CONFIG" >/dev/null \
        || die "the demo configuration $CONFIG does not pass check-config (error above)"
}

print_try() {
    # shellcheck disable=SC1091
    . "$DS_STATE/ds.env"
    cat <<EOF

ldap-pam-proxy demo is running:
  proxy      $PROXY_URI (StartTLS) and $LDAPS_URI   (pid $(<"$PIDFILE"), log $LOGFILE)
  TLS        trust the demo CA: export LDAPTLS_CACERT=$TLS_DIR/ca.crt
  metrics    http://$METRICS/metrics  (and /healthz, /readyz)
  389 DS     $DS_URI   (instance slapd-$INSTANCE, suffix $DS_SUFFIX)
  config     $CONFIG
  PAM        services $PAM_SERVICES/{duo,csu} under pam_wrapper; passwords in $PAM_STATE/passdb;
             simulated pushes are logged in $PAM_STATE/duo-pushes

Try:
  # anonymous search, relayed to 389
  ldapsearch -x -H $PROXY_URI -b $DS_SUFFIX '(uid=alice)'

  export LDAPTLS_CACERT=$TLS_DIR/ca.crt

  # alice is an internal user: duo route, PAM service "duo"; takes ~${DUO_DELAY} s (the simulated push)
  ldapwhoami -x -ZZ -H $PROXY_URI -D uid=alice,ou=People,$DS_SUFFIX -w alice-duo-pw

  # erin's home directory is /home/erin@colostate.edu: csu route, PAM service "csu"; over LDAPS
  ldapwhoami -x -H $LDAPS_URI -D uid=erin,ou=People,$DS_SUFFIX -w erin-csu-pw

  # the same bind in clear text is refused before PAM: confidentialityRequired (13)
  ldapwhoami -x -H $PROXY_URI -D uid=erin,ou=People,$DS_SUFFIX -w erin-csu-pw

  # noposix matches no route: the bind is forwarded, 389 checks its own password (over TLS
  # too: in clear text every bind in a secure route's scope gets 13, route or not)
  ldapwhoami -x -ZZ -H $PROXY_URI -D uid=noposix,ou=People,$DS_SUFFIX -w noposix-dirpw

  # two identical binds at once share one push (one new line in duo-pushes)
  for i in 1 2; do ldapwhoami -x -H $LDAPS_URI -D uid=bob,ou=People,$DS_SUFFIX -w bob-duo-pw & done; wait
  tail -n 2 $PAM_STATE/duo-pushes

  # the PAM worker pool, binds by route and result
  curl -s http://$METRICS/metrics | grep -E '^ldap_pam_proxy_(pam_workers|binds_total)' 

PAM users: alice bob carol dave (duo, <uid>-duo-pw), erin frank grace (csu, <uid>-csu-pw).
Push delay: echo 10 > $PAM_STATE/duo-delay

Stop:   scripts/demo.sh stop      (proxy and 389; rerun scripts/demo.sh to start again)
Remove: scripts/demo.sh remove    (also deletes the 389 instance and $STATE)
EOF
}

cmd_up() {
    local reset=0
    while (( $# )); do
        case $1 in
            --reset) reset=1 ;;
            -h|--help) usage ;;
            *) echo "$SELF: unknown argument '$1'" >&2; usage ;;
        esac
        shift
    done
    need_root
    cargo_on_path
    [[ $DUO_DELAY =~ ^[0-9]+$ ]] || die "DEMO_DUO_DELAY must be whole seconds, not '$DUO_DELAY'"
    [[ -x $DS_SH ]] || die "$DS_SH missing or not executable"

    # A rerun replaces the running proxy (new binary, new config).
    stop_proxy
    proxy_port_free

    "$REPO_DIR/scripts/install-deps.sh"
    build

    install -d -m 0755 "$STATE"
    if (( reset )); then
        log "--reset: removing 389 instance slapd-$INSTANCE and $STATE"
        "$DS_SH" remove "$INSTANCE"
        rm -rf "$STATE"
        install -d -m 0755 "$STATE"
    fi
    directory
    pam_services
    certificates
    write_config
    start_proxy "$BIN"
    print_try
}

cmd_status() {
    local rc=0 pid
    if pid=$(proxy_pid); then
        echo "proxy: running (pid $pid) on $PROXY_URI"
    else
        echo "proxy: not running"; rc=1
    fi
    if [[ ! -e /etc/dirsrv/slapd-$INSTANCE ]]; then
        echo "389 DS: instance slapd-$INSTANCE does not exist"; rc=1
    elif pid=$("$DS_SH" status "$INSTANCE"); then
        echo "389 DS: slapd-$INSTANCE running (pid $pid) on 127.0.0.1:$DEMO_DS_PORT"
    else
        echo "389 DS: slapd-$INSTANCE stopped"; rc=1
    fi
    return "$rc"
}

cmd_stop() {
    need_root
    stop_proxy
    if [[ -e /etc/dirsrv/slapd-$INSTANCE ]]; then
        "$DS_SH" stop "$INSTANCE"
    fi
}

cmd_remove() {
    need_root
    stop_proxy
    if [[ -e /etc/dirsrv/slapd-$INSTANCE ]]; then
        "$DS_SH" remove "$INSTANCE"
    fi
    rm -rf "$STATE"
    log "removed the demo (389 instance slapd-$INSTANCE and $STATE)"
}

case ${1:-up} in
    up|start) (( $# == 0 )) || shift; cmd_up "$@" ;;
    --reset) cmd_up "$@" ;;
    status) (( $# == 1 )) || usage; cmd_status ;;
    stop) (( $# == 1 )) || usage; cmd_stop ;;
    remove) (( $# == 1 )) || usage; cmd_remove ;;
    -h|--help|help) usage ;;
    *) echo "$SELF: unknown command '$1'" >&2; usage ;;
esac
