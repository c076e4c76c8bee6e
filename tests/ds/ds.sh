#!/usr/bin/env bash
# Create, load, start, stop and remove a real 389 Directory Server instance
# without systemd. Used by the test suite and the demo. Run as root.
#
#   ds.sh create NAME PORT STATEDIR [--ldif FILE] [--tls-port PORT2] [--listen-host ADDR]
#   ds.sh start NAME        # ns-slapd started directly: inherits the caller's environment,
#                           # plus LD_PRELOAD=$DS_SLAPD_LD_PRELOAD for ns-slapd only
#   ds.sh stop NAME         # SIGTERM, then SIGKILL after DS_STOP_TIMEOUT (10) seconds
#   ds.sh restart NAME
#   ds.sh status NAME       # exit 0 and print the pid when running, 1 when not
#   ds.sh remove NAME       # stop, then dsctl NAME remove --do-it; fine if already gone
#   ds.sh replicate STATEDIR_A STATEDIR_B
#                           # two running instances made by create become suppliers of
#                           # one multi-supplier topology (replica ids 1 and 2, one
#                           # agreement each way); B is initialised from A
#
# create writes STATEDIR/ds.env (KEY='value' lines, shell-sourceable). See
# tests/ds/README.md for the keys, the directory layout and measured timings.
set -euo pipefail

readonly SELF=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
readonly SCRIPT_DIR REPO_DIR

readonly SUFFIX='dc=example,dc=com'
readonly ROOT_DN='cn=Directory Manager'
readonly SERVICE_DN="cn=ldap-pam-proxy,ou=Services,$SUFFIX"
readonly SERVICE_PW='proxy-service-pw'
readonly NS_SLAPD=/usr/sbin/ns-slapd
readonly DEFAULTS_INF=/usr/share/dirsrv/inf/defaults.inf
READY_TIMEOUT=${DS_READY_TIMEOUT:-30}   # seconds, whole
STOP_TIMEOUT=${DS_STOP_TIMEOUT:-10}     # seconds, whole
[[ $READY_TIMEOUT =~ ^[0-9]+$ && $STOP_TIMEOUT =~ ^[0-9]+$ ]] || { echo "ds.sh: error: DS_READY_TIMEOUT and DS_STOP_TIMEOUT must be whole seconds" >&2; exit 2; }

die() { echo "$SELF: error: $*" >&2; exit 1; }
log() { echo "$SELF: $*" >&2; }
now() { date +%s.%N; }
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
    exit 2
}

check_name() {
    [[ $1 =~ ^[A-Za-z0-9_-]+$ ]] || die "bad instance name '$1' (letters, digits, _ and - only)"
}
check_port() {
    if [[ ! $1 =~ ^[0-9]+$ ]] || (( $1 < 1 || $1 > 65535 )); then die "bad port '$1'"; fi
}
need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (389 DS instances are system-wide)"; }
need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' not found: run scripts/install-deps.sh"
    done
}

inst_dir() { echo "/etc/dirsrv/slapd-$1"; }
pidfile() { echo "/run/dirsrv/slapd-$1.pid"; }
errors_log() { echo "/var/log/dirsrv/slapd-$1/errors"; }

# Value of a single-valued attribute of cn=config in dse.ldif.
dse_config_attr() {
    awk -v attr="$2" '
        /^dn: / { inconf = ($0 == "dn: cn=config") }
        inconf && tolower($0) ~ "^" tolower(attr) ":" { sub(/^[^:]*: */, ""); print; exit }
    ' "$(inst_dir "$1")/dse.ldif"
}

# Set (replace) attributes of cn=config in dse.ldif; args: NAME attr value ...
# The server must be stopped: it rewrites dse.ldif on shutdown.
dse_config_set() {
    local name=$1; shift
    local f; f="$(inst_dir "$name")/dse.ldif"
    local tmp="$f.ds-sh.tmp"
    awk -v kv="$(printf '%s\n' "$@")" '
        BEGIN {
            n = split(kv, a, "\n")
            for (i = 1; i + 1 <= n; i += 2) { key[tolower(a[i])] = 1; order[++m] = a[i]; val[a[i]] = a[i+1] }
        }
        /^dn: / { inconf = ($0 == "dn: cn=config") }
        inconf && /^ / && skipping { next }
        inconf && /^[^ ]/ {
            skipping = 0
            split($0, p, ":")
            if (tolower(p[1]) in key) { skipping = 1; next }
        }
        inconf && /^$/ {
            for (j = 1; j <= m; j++) print order[j] ": " val[order[j]]
            inconf = 0
        }
        { print }
    ' "$f" > "$tmp"
    grep -q "^$1: " "$tmp" || { rm -f "$tmp"; die "could not set $1 in $f"; }
    chown --reference="$f" "$tmp"
    chmod --reference="$f" "$tmp"
    mv -f "$tmp" "$f"
}

# Pids of ns-slapd processes serving instance NAME (any mode: daemon, ldif2db),
# found by their exact "-D /etc/dirsrv/slapd-NAME" arguments.
instance_pids() {
    local want pid arg prev
    want=$(inst_dir "$1")
    for pid in $(pgrep -x ns-slapd || true); do
        prev=''
        while IFS= read -r -d '' arg; do
            if [[ $prev == -D && $arg == "$want" ]]; then echo "$pid"; break; fi
            prev=$arg
        done < "/proc/$pid/cmdline" 2>/dev/null || true
    done
}

running_pid() {
    local pids; pids=$(instance_pids "$1")
    [[ -n $pids ]] || return 1
    head -n1 <<<"$pids"
}

ensure_run_dirs() {
    install -d -o dirsrv -g dirsrv -m 0770 /run/dirsrv
    install -d -o dirsrv -g dirsrv -m 0770 /run/lock/dirsrv
    install -d -o dirsrv -g dirsrv -m 0770 "/run/lock/dirsrv/slapd-$1"
}

# Host to probe for the plain port, from nsslapd-listenhost.
probe_host() {
    local h; h=$(dse_config_attr "$1" nsslapd-listenhost)
    case $h in
        ''|0.0.0.0|'::'|localhost) echo 127.0.0.1 ;;
        *:*) echo "[$h]" ;;
        *) echo "$h" ;;
    esac
}

# rootDSE answers on ldap://HOST:PORT within a short bound.
ldap_answers() {
    timeout 3 ldapsearch -x -o nettimeout=2 -H "$1" -b '' -s base -LLL 1.1 >/dev/null 2>&1
}

port_in_use() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

show_errors_tail() {
    local f; f=$(errors_log "$1")
    if [[ -r $f ]]; then
        echo "---- last lines of $f ----" >&2
        tail -n 15 "$f" >&2
        echo "----" >&2
    fi
}

cmd_start() {
    (( $# == 1 )) || usage
    local name=$1
    check_name "$name"; need_root; need_cmd ldapsearch timeout
    [[ -f $(inst_dir "$name")/dse.ldif ]] || die "no instance slapd-$name ($(inst_dir "$name")/dse.ldif missing)"
    local pid
    if pid=$(running_pid "$name"); then
        log "slapd-$name already running (pid $pid); environment not changed"
        return 0
    fi
    ensure_run_dirs "$name"
    rm -f "$(pidfile "$name")"
    local port host uri t0 out
    port=$(dse_config_attr "$name" nsslapd-port)
    host=$(probe_host "$name")
    uri="ldap://$host:$port"
    t0=$(now)
    out=$(mktemp)
    # ns-slapd daemonises (the parent returns once the child is forked) and
    # drops to user dirsrv. It inherits this script's environment, so callers
    # can pass PAM_WRAPPER* etc. through; DS_SLAPD_LD_PRELOAD is added to
    # LD_PRELOAD for ns-slapd alone (not for this script and its helpers).
    local preload=${LD_PRELOAD:-}
    [[ -z ${DS_SLAPD_LD_PRELOAD:-} ]] || preload="$DS_SLAPD_LD_PRELOAD${preload:+:$preload}"
    if ! env ${preload:+LD_PRELOAD="$preload"} "$NS_SLAPD" -D "$(inst_dir "$name")" -i "$(pidfile "$name")" >"$out" 2>&1; then
        grep -E ' - (ERR|CRIT|EMERG) - ' "$out" | tail -n 10 >&2 || true
        rm -f "$out"
        show_errors_tail "$name"
        die "ns-slapd for slapd-$name failed to start"
    fi
    local start_ms deadline
    start_ms=$(now_ms)
    deadline=$((start_ms + READY_TIMEOUT * 1000))
    while ! ldap_answers "$uri"; do
        if ! running_pid "$name" >/dev/null && (( $(now_ms) > start_ms + 1000 )); then
            grep -E ' - (ERR|CRIT|EMERG) - ' "$out" | tail -n 10 >&2 || true
            rm -f "$out"
            show_errors_tail "$name"
            die "ns-slapd for slapd-$name exited during startup"
        fi
        if (( $(now_ms) >= deadline )); then
            rm -f "$out"
            show_errors_tail "$name"
            die "slapd-$name did not answer on $uri within ${READY_TIMEOUT}s"
        fi
        sleep 0.1
    done
    rm -f "$out"
    log "slapd-$name started (pid $(running_pid "$name" || echo '?')), answering on $uri after $(elapsed "$t0")s"
}

cmd_stop() {
    (( $# == 1 )) || usage
    local name=$1
    check_name "$name"; need_root
    local pids t0 deadline
    pids=$(instance_pids "$name")
    if [[ -z $pids ]]; then
        rm -f "$(pidfile "$name")"
        log "slapd-$name not running"
        return 0
    fi
    t0=$(now)
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    deadline=$(( $(now_ms) + STOP_TIMEOUT * 1000 ))
    while [[ -n $(instance_pids "$name") ]]; do
        if (( $(now_ms) >= deadline )); then
            local left; left=$(instance_pids "$name")
            log "slapd-$name did not stop within ${STOP_TIMEOUT}s after SIGTERM: SIGKILL ${left//$'\n'/ }"
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
            local _
            for _ in $(seq 50); do
                [[ -z $(instance_pids "$name") ]] && break
                sleep 0.1
            done
            [[ -z $(instance_pids "$name") ]] || die "ns-slapd of slapd-$name survived SIGKILL"
            break
        fi
        sleep 0.1
    done
    # A killed ns-slapd leaves its lock file, and until init reaps it (can take
    # seconds here) its zombie makes the next ns-slapd refuse to start
    # ("already running as process N"). Its pid is ours to clean up.
    local p
    for p in $pids; do
        rm -f "/run/lock/dirsrv/slapd-$name/server/$p" "/run/lock/dirsrv/slapd-$name/imports/$p" \
            "/run/lock/dirsrv/slapd-$name/exports/$p"
    done
    rm -f "$(pidfile "$name")"
    log "slapd-$name stopped in $(elapsed "$t0")s"
}

cmd_status() {
    (( $# == 1 )) || usage
    check_name "$1"
    local pid
    if pid=$(running_pid "$1"); then echo "$pid"; return 0; fi
    return 1
}

cmd_remove() {
    (( $# == 1 )) || usage
    local name=$1
    check_name "$name"; need_root
    local t0; t0=$(now)
    cmd_stop "$name"
    if [[ -f $(inst_dir "$name")/dse.ldif ]]; then
        need_cmd dsctl
        local out
        if ! out=$(timeout 120 dsctl "$name" remove --do-it 2>&1); then
            echo "$out" >&2
            log "dsctl $name remove failed; deleting the instance's files directly"
        fi
    fi
    # Leftovers of a half-created or half-removed instance.
    rm -rf "/etc/dirsrv/slapd-$name" "/var/lib/dirsrv/slapd-$name" "/var/log/dirsrv/slapd-$name" \
        "/run/lock/dirsrv/slapd-$name" "/run/slapd-$name.socket" \
        "/run/dirsrv/slapd-$name.pid" "/run/dirsrv/slapd-$name.stats"
    [[ -z $(instance_pids "$name") ]] || die "an ns-slapd of slapd-$name is still running"
    log "slapd-$name removed in $(elapsed "$t0")s"
}

# CA + RSA server certificate for DIR (SANs: localhost, 127.0.0.1, ::1, hostname).
make_certs() {
    local dir=$1 host
    host=$(hostname 2>/dev/null || echo localhost)
    install -d -m 0755 "$dir"
    local san="DNS:localhost,IP:127.0.0.1,IP:::1"
    [[ $host != localhost && $host =~ ^[A-Za-z0-9.-]+$ ]] && san="$san,DNS:$host"
    local fqdn; fqdn=$(hostname -f 2>/dev/null || true)
    [[ -n $fqdn && $fqdn != "$host" && $fqdn != localhost && $fqdn =~ ^[A-Za-z0-9.-]+$ ]] && san="$san,DNS:$fqdn"
    (
        cd "$dir"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -keyout ca.key -out ca.crt -subj "/CN=ldap-pam-proxy test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr -subj "/CN=localhost"
        printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" > server.ext
        openssl x509 -req -sha256 -days 3650 -in server.csr -CA ca.crt -CAkey ca.key \
            -set_serial "0x$(openssl rand -hex 8)" -extfile server.ext -out server.crt
        rm -f server.csr server.ext ca.srl
        chmod 0644 ca.crt server.crt
    ) >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "openssl failed to make the test certificates"; }
}

# Offline import of LDIF into userroot (replaces the backend). Server stopped.
import_ldif() {
    local name=$1 ldif=$2
    local dest="/var/lib/dirsrv/slapd-$name/ldif/ds-sh-import.ldif"
    install -d -o dirsrv -g dirsrv -m 0770 "$(dirname "$dest")"
    install -o dirsrv -g dirsrv -m 0600 "$ldif" "$dest"   # dirsrv may not traverse the caller's dirs
    local want elog before got out
    want=$(grep -c '^dn::\? ' "$ldif" || true)
    elog=$(errors_log "$name")
    before=$(stat -c %s "$elog" 2>/dev/null || echo 0)
    if ! out=$("$NS_SLAPD" ldif2db -D "$(inst_dir "$name")" -n userroot -i "$dest" 2>&1); then
        grep -v fips_enabled <<<"$out" >&2 || true
        tail -c +"$((before + 1))" "$elog" | grep -E ' - (WARN|ERR|EMERG|CRIT) - |Import complete' | tail -n 20 >&2 || true
        die "ldif2db of $ldif failed (ns-slapd ldif2db exit code; skipped entries count as failure)"
    fi
    local summary
    summary=$(tail -c +"$((before + 1))" "$elog" | grep -o 'Import complete\.  Processed .*' | tail -n1)
    got=$(sed -n 's/^Import complete\.  Processed \([0-9]*\) entries in .*/\1/p' <<<"$summary")
    if [[ $got != "$want" ]]; then
        tail -c +"$((before + 1))" "$elog" | grep -E ' - (WARN|ERR) - ' | tail -n 20 >&2 || true
        die "ldif2db of $ldif: expected $want entries, got '${summary:-no summary}' (see $elog)"
    fi
    rm -f "$dest"
    echo "$got"
}

# EXIT trap of create: on failure, keep the logs and remove the half-made instance.
_create_failed() {
    local rc=$?
    trap - EXIT
    if (( rc != 0 )) && [[ ${DS_KEEP_ON_FAILURE:-0} != 1 ]]; then
        log "creation of slapd-$CREATE_NAME failed; saving its errors log to $CREATE_STATEDIR/errors.log and removing the instance (DS_KEEP_ON_FAILURE=1 keeps it)"
        cp -f "$(errors_log "$CREATE_NAME")" "$CREATE_STATEDIR/errors.log" 2>/dev/null || true
        cmd_remove "$CREATE_NAME" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

cmd_create() {
    (( $# >= 3 )) || usage
    local name=$1 port=$2 statedir=$3; shift 3
    local ldif="$REPO_DIR/tests/data/sample.ldif" tls_port='' listen_host=127.0.0.1
    while (( $# )); do
        case $1 in
            --ldif) (( $# >= 2 )) || usage; ldif=$2; shift 2 ;;
            --tls-port) (( $# >= 2 )) || usage; tls_port=$2; shift 2 ;;
            --listen-host) (( $# >= 2 )) || usage; listen_host=$2; shift 2 ;;
            *) die "unknown option '$1'" ;;
        esac
    done
    check_name "$name"; check_port "$port"
    [[ -z $tls_port ]] || { check_port "$tls_port"; [[ $tls_port != "$port" ]] || die "--tls-port must differ from PORT"; }
    need_root
    need_cmd dscreate dsctl ldapsearch timeout awk install
    [[ -x $NS_SLAPD ]] || die "$NS_SLAPD not found: run scripts/install-deps.sh"
    [[ -z $tls_port ]] || need_cmd openssl
    grep -Eq '^[[:space:]]*with_systemd[[:space:]]*=[[:space:]]*0[[:space:]]*$' "$DEFAULTS_INF" 2>/dev/null \
        || die "$DEFAULTS_INF does not say with_systemd = 0 (dscreate would call systemctl): run scripts/install-deps.sh"
    [[ -r $ldif ]] || die "LDIF '$ldif' not readable"
    ldif=$(cd "$(dirname "$ldif")" && pwd)/$(basename "$ldif")
    [[ ! -e $(inst_dir "$name") ]] || die "instance slapd-$name already exists: run '$0 remove $name' first"
    ! port_in_use "$port" || die "port $port is already in use on 127.0.0.1"
    [[ -z $tls_port ]] || ! port_in_use "$tls_port" || die "port $tls_port is already in use on 127.0.0.1"

    mkdir -p "$statedir"
    statedir=$(cd "$statedir" && pwd)
    local t0 t; t0=$(now)
    local root_pw=${DS_ROOT_PW:-}
    [[ -n $root_pw ]] || root_pw="dm-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    (( ${#root_pw} >= 8 )) || die "DS_ROOT_PW must have at least 8 characters"
    [[ $root_pw != *"'"* && $root_pw != *$'\n'* ]] || die "DS_ROOT_PW must not contain quotes or newlines"

    # From here on a failure removes the half-made instance (logs kept in STATEDIR).
    CREATE_NAME=$name CREATE_STATEDIR=$statedir
    trap _create_failed EXIT

    local inf="$statedir/dscreate.inf"
    (
        umask 077
        cat > "$inf" <<EOF
[general]
full_machine_name = localhost
start = False
systemd = False
strict_host_checking = False

[slapd]
instance_name = $name
port = $port
root_password = $root_pw
self_sign_cert = False
${tls_port:+secure_port = $tls_port}

[backend-userroot]
suffix = $SUFFIX
create_suffix_entry = False
sample_entries = no
EOF
    )
    t=$(now)
    if ! timeout 180 dscreate from-file "$inf" >"$statedir/dscreate.log" 2>&1; then
        cat "$statedir/dscreate.log" >&2
        die "dscreate failed for slapd-$name (inf: $inf)"
    fi
    log "dscreate: $(elapsed "$t")s"
    # dscreate starts and stops the server in its last phase; make sure it is down.
    [[ -z $(instance_pids "$name") ]] || cmd_stop "$name" >/dev/null 2>&1

    t=$(now)
    local n
    n=$(import_ldif "$name" "$ldif")
    log "ldif2db: $n entries from $ldif in $(elapsed "$t")s"

    local settings=(nsslapd-listenhost "$listen_host")
    if [[ -n $tls_port ]]; then
        t=$(now)
        make_certs "$statedir/tls"
        local o
        o=$(timeout 60 dsctl "$name" tls import-ca "$statedir/tls/ca.crt" test-CA 2>&1) \
            || { echo "$o" >&2; die "dsctl tls import-ca failed"; }
        o=$(timeout 60 dsctl "$name" tls import-server-key-cert "$statedir/tls/server.crt" "$statedir/tls/server.key" 2>&1) \
            || { echo "$o" >&2; die "dsctl tls import-server-key-cert failed"; }
        rm -f "$statedir/tls/ca.crt-"[0-9]*   # dsctl's split copies of the CA file
        settings+=(nsslapd-security on nsslapd-securePort "$tls_port" nsslapd-securelistenhost "$listen_host")
        log "TLS: certificates made and imported in $(elapsed "$t")s"
    fi
    dse_config_set "$name" "${settings[@]}"

    cmd_start "$name"

    local host; host=$(probe_host "$name")
    if [[ -n $tls_port ]]; then
        LDAPTLS_CACERT="$statedir/tls/ca.crt" ldap_answers "ldaps://$host:$tls_port" \
            || die "LDAPS on port $tls_port does not work with CA $statedir/tls/ca.crt"
        LDAPTLS_CACERT="$statedir/tls/ca.crt" timeout 3 ldapsearch -x -ZZ -o nettimeout=2 \
            -H "ldap://$host:$port" -b '' -s base -LLL 1.1 >/dev/null 2>&1 \
            || die "StartTLS on port $port does not work with CA $statedir/tls/ca.crt"
    fi

    (umask 077; printf '%s' "$SERVICE_PW" > "$statedir/service.pw"; printf '%s' "$root_pw" > "$statedir/root.pw")
    local envf="$statedir/ds.env"
    (
        umask 077
        q() { printf "%s='%s'\n" "$1" "$2"; }
        {
            echo "# 389 DS instance slapd-$name, written by tests/ds/ds.sh create"
            q DS_NAME "$name"
            q DS_PORT "$port"
            q DS_URI "ldap://$host:$port"
            if [[ -n $tls_port ]]; then
                q DS_TLS_PORT "$tls_port"
                q DS_LDAPS_URI "ldaps://$host:$tls_port"
                q DS_CA "$statedir/tls/ca.crt"
            fi
            q DS_LDAPI_URI "ldapi://%2Frun%2Fslapd-$name.socket"
            q DS_SUFFIX "$SUFFIX"
            q DS_ROOT_DN "$ROOT_DN"
            q DS_ROOT_PW "$root_pw"
            q DS_ROOT_PW_FILE "$statedir/root.pw"
            q DS_SERVICE_DN "$SERVICE_DN"
            q DS_SERVICE_PW_FILE "$statedir/service.pw"
            q DS_PIDFILE "$(pidfile "$name")"
            q DS_INSTANCE_DIR "$(inst_dir "$name")"
            q DS_ERRORS_LOG "$(errors_log "$name")"
            q DS_ACCESS_LOG "/var/log/dirsrv/slapd-$name/access"
            q DS_STATEDIR "$statedir"
        } > "$envf"
    )
    trap - EXIT
    log "slapd-$name created in $(elapsed "$t0")s: $envf"
}

# Value of KEY in a ds.env file.
env_value() {
    sed -n "s/^$2='\(.*\)'\$/\1/p" "$1"
}

cmd_replicate() {
    (( $# == 2 )) || usage
    local a=$1/ds.env b=$2/ds.env
    [[ -r $a && -r $b ]] || die "replicate: $a and $b must be ds.env files written by create"
    need_cmd dsconf ldapsearch
    local t0; t0=$(now)
    local suffix; suffix=$(env_value "$a" DS_SUFFIX)
    local repl_dn='cn=replication manager,cn=config'
    local repl_pw; repl_pw=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    local env id uri
    dsc() { # ds.env, dsconf arguments...
        local e=$1; shift
        timeout 60 dsconf -D "$(env_value "$e" DS_ROOT_DN)" -w "$(env_value "$e" DS_ROOT_PW)" \
            "$(env_value "$e" DS_URI)" "$@"
    }
    id=1
    for env in "$a" "$b"; do
        dsc "$env" replication enable --suffix "$suffix" --role supplier --replica-id "$id" \
            --bind-dn "$repl_dn" --bind-passwd "$repl_pw" >/dev/null \
            || die "replication enable failed on $(env_value "$env" DS_URI)"
        id=$((id + 1))
    done
    agreement() { # from-env to-env name
        dsc "$1" repl-agmt create --suffix "$suffix" --host 127.0.0.1 --port "$(env_value "$2" DS_PORT)" \
            --conn-protocol LDAP --bind-dn "$repl_dn" --bind-passwd "$repl_pw" --bind-method SIMPLE "$3" >/dev/null \
            || die "repl-agmt create $3 failed"
    }
    agreement "$a" "$b" a-to-b
    agreement "$b" "$a" b-to-a
    dsc "$a" repl-agmt init --suffix "$suffix" a-to-b >/dev/null || die "repl-agmt init failed"
    local deadline=$(( $(now_ms) + READY_TIMEOUT * 1000 )) status
    while :; do
        status=$(dsc "$a" repl-agmt init-status --suffix "$suffix" a-to-b 2>&1 | tail -n1)
        case $status in
            *successfully*) break ;;
            *[Ff]ail*|*[Ee]rror*) die "initialising $(env_value "$b" DS_URI) from $(env_value "$a" DS_URI): $status" ;;
            *) ;; # "started", "in progress", "Unknown" (not reported yet)
        esac
        (( $(now_ms) < deadline )) || die "initialisation not done within ${READY_TIMEOUT}s: $status"
        sleep 0.2
    done
    log "$(env_value "$a" DS_URI) and $(env_value "$b" DS_URI) replicate both ways (set up in $(elapsed "$t0")s)"
}

(( $# >= 1 )) || usage
cmd=$1; shift
case $cmd in
    create) cmd_create "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) (( $# == 1 )) || usage; cmd_stop "$1"; cmd_start "$1" ;;
    status) cmd_status "$@" ;;
    remove) cmd_remove "$@" ;;
    replicate) cmd_replicate "$@" ;;
    -h|--help|help) usage ;;
    *) echo "$SELF: unknown command '$cmd'" >&2; usage ;;
esac
