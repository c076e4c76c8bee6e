#!/usr/bin/env bash
# Benchmark (issue 13): the proxy beside direct 389, HAProxy (TCP) and a floor relay, in
# one run on one machine, as ratios to direct 389 in the same round.
#
#   bench/compare.sh            # as root, from a clean clone; see bench/README.md
#
# Workloads, in interleaved rounds (every target once per workload per round, the order
# of the targets rotated from round to round):
#   (a) base search, persistent connections          ldclt, 8 threads
#   (b) subtree search returning 112 entries         ldclt, 8 threads
#   (c) connect + bind + search + unbind per op      ldclt, 8 threads (directory passwords)
#   (d) web-app login: service-account bind, search the user, bind as the user through
#       PAM (fast pam_matrix service), search the user's groups, unbind
#                                                    bench/ldap_client.rs, 8 threads
#   then (e) N clients (10,000, or what the file descriptor limit allows) held idle, one
#       search each, gone; three cycles: RSS idle / at N / after they leave.
# Latency (p50/p99): bench/ldap_client.rs, one connection, one operation at a time, after
# each load point. CPU per operation: utime+stime deltas from /proc/<pid>/stat.
#
# Knobs (environment): BENCH_ROUNDS (3), BENCH_SECONDS (per load point, a multiple of 10;
# 10), BENCH_LATENCY_SECONDS (2), BENCH_THREADS (8), BENCH_CLIENTS (10000), BENCH_CYCLES (3),
# BENCH_WORKLOADS ("a b c d e"), BENCH_PROXY_BIN (skip the build of the proxy),
# CARGO_TARGET_DIR, BENCH_KEEP=1 (keep the work directory: logs, ldclt outputs,
# results.tsv, result.txt), BENCH_PERF=1 (perf record of the proxy under load in round 1
# of each workload, summarised into perf-W-T.txt in the kept work directory; perf's own
# cost skews that round's figures, so profile in a run of its own).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO BENCH="$REPO/bench" DS_SH="$REPO/tests/ds/ds.sh"
readonly PAM_WRAPPER_LIB=/usr/lib/x86_64-linux-gnu/libpam_wrapper.so
readonly PAM_MATRIX=/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so
readonly SUFFIX='dc=example,dc=com'
readonly PEOPLE="ou=People,$SUFFIX"
readonly USERS=1000
readonly ROUNDS=${BENCH_ROUNDS:-3}
readonly MEASURE=${BENCH_SECONDS:-10}
readonly LATENCY=${BENCH_LATENCY_SECONDS:-2}
readonly THREADS=${BENCH_THREADS:-8}
readonly CYCLES=${BENCH_CYCLES:-3}
readonly WORKLOADS=" ${BENCH_WORKLOADS:-a b c d e} "
[[ $MEASURE =~ ^[1-9][0-9]*0$ ]] || { echo "BENCH_SECONDS must be a multiple of 10 (ldclt samples)" >&2; exit 2; }
for v in "$ROUNDS" "$LATENCY" "$THREADS" "$CYCLES" "${BENCH_CLIENTS:-10000}"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS, BENCH_LATENCY_SECONDS, BENCH_THREADS, BENCH_CYCLES, BENCH_CLIENTS: whole numbers > 0" >&2; exit 2; }
done
wants() { [[ $WORKLOADS == *" $1 "* ]]; }

T0=$(date +%s)
# Progress goes to the script's stderr as it was at the start, also from a trap that runs
# while a command's output is redirected to a file.
exec {LOG_FD}>&2
say() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&"$LOG_FD"; }
die() { say "error: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (389 DS instances are system-wide, packages are installed)"

# ---------------------------------------------------------------- state and cleanup
WORK='' NAME_A="lppcmpa$$" NAME_B="lppcmpb$$" DS_CREATED=()
PIDS=()          # long-running processes we started: relays, proxies
JOB_PID=''       # the load generator or client running now
shopt -s nullglob
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
remember_pam_copies

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    exec >&"$LOG_FD" 2>&"$LOG_FD"
    (( rc == 0 )) || say "cleaning up after failure (exit $rc)"
    if [[ -n $JOB_PID ]]; then pkill -KILL -P "$JOB_PID" 2>/dev/null; kill -KILL "$JOB_PID" 2>/dev/null; fi
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p" 3; done
    local name
    for name in "${DS_CREATED[@]}"; do
        DS_STOP_TIMEOUT=5 "$DS_SH" remove "$name" >/dev/null 2>&1 \
            || say "warning: could not remove 389 instance $name (run: $DS_SH remove $name)"
    done
    remove_our_pam_copies
    if [[ -n $WORK && ${BENCH_KEEP:-0} != 1 ]]; then rm -rf -- "$WORK"; elif [[ -n $WORK ]]; then say "kept $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# Runs a command in the background and waits, so that a signal interrupts the wait at
# once (bash runs traps only between foreground commands).
bg_wait() { "$@" & JOB_PID=$!; local rc=0; wait "$JOB_PID" || rc=$?; JOB_PID=''; return "$rc"; }

# ---------------------------------------------------------------- setup: packages, builds
say "checking packages (scripts/install-deps.sh; haproxy for this benchmark)"
bg_wait "$REPO/scripts/install-deps.sh"
if ! command -v haproxy >/dev/null; then
    say "installing haproxy (apt-get)"
    DEBIAN_FRONTEND=noninteractive bg_wait apt-get install -y -qq --no-install-recommends haproxy >/dev/null \
        || die "apt-get install haproxy failed"
fi
command -v ldclt >/dev/null || die "ldclt not found (it ships with 389-ds-base)"
[[ -e $PAM_WRAPPER_LIB && -e $PAM_MATRIX ]] || die "pam_wrapper missing (libpam-wrapper)"
if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then PATH="$HOME/.cargo/bin:$PATH"; fi

say "building the proxy and the floor relay (cargo build --release)"
(cd "$REPO" && bg_wait cargo build --release --quiet --bin ldap-pam-proxy --example floor-relay) || die "cargo build failed"
TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
    | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || die "cargo metadata failed"
PROXY_BIN=${BENCH_PROXY_BIN:-$TARGET_DIR/release/ldap-pam-proxy}
FLOOR_BIN=$TARGET_DIR/release/examples/floor-relay
[[ -x $PROXY_BIN && -x $FLOOR_BIN ]] || die "missing $PROXY_BIN or $FLOOR_BIN"

WORK=$(mktemp -d /tmp/lpp-compare.XXXXXX)
chmod 0755 "$WORK"    # ns-slapd's PAM runs as dirsrv and reads its passdb in here
say "building the bench client (rustc -O bench/ldap_client.rs)"
bg_wait rustc --edition 2021 -O -o "$WORK/ldap-client" "$BENCH/ldap_client.rs" || die "rustc failed"
CLIENT=$WORK/ldap-client

# Each relay holds two descriptors per client and cannot raise its hard limit: (e) uses
# as many clients as that allows, at most BENCH_CLIENTS.
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
ulimit -n "$NOFILE"
CLIENTS=$(( ${BENCH_CLIENTS:-10000} < (NOFILE - 200) / 2 ? ${BENCH_CLIENTS:-10000} : (NOFILE - 200) / 2 ))

# ---------------------------------------------------------------- the directory
say "generating the directory: sample data, bench0001..bench$USERS, 17 groups"
# cn "Bench User N": (cn=Bench User 1*) matches 1, 10-19, 100-199 and 1000 = 112 entries.
# Groups: bench user i is a member of benchgroup(i mod 10) and benchteam(i mod 7).
{
    cat "$REPO/tests/data/sample.ldif"
    awk -v n=$USERS -v people="$PEOPLE" -v groups="ou=Groups,$SUFFIX" 'BEGIN {
        for (i = 1; i <= n; i++) { u = sprintf("bench%04d", i)
            printf "\ndn: uid=%s,%s\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n", u, people
            printf "objectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: %s\ncn: Bench User %d\nsn: User%d\n", u, i, i
            printf "uidNumber: %d\ngidNumber: 10000\nhomeDirectory: /home/%s\nloginShell: /bin/bash\nuserPassword: %s-dirpw\n", 20000 + i, u, u }
        for (k = 0; k < 17; k++) {
            g = k < 10 ? sprintf("benchgroup%d", k) : sprintf("benchteam%d", k - 10)
            printf "\ndn: cn=%s,%s\nobjectClass: top\nobjectClass: groupOfNames\ncn: %s\n", g, groups, g
            for (i = 1; i <= n; i++) if (k < 10 ? i % 10 == k : i % 7 == k - 10) printf "member: uid=bench%04d,%s\n", i, people }
    }'
} > "$WORK/bench.ldif"

# A pam_wrapper service directory with the "fast" service (pam.d/test/csu: pam_matrix
# auth + account) and a passdb giving every bench user the PAM password <uid>-pampw.
make_pam() {  # make_pam DIR [owner]
    local dir=$1 owner=${2:-}
    mkdir -p "$dir/services" "$dir/state"
    for ((i = 1; i <= USERS; i++)); do printf 'bench%04d:bench%04d-pampw:fast\n' "$i" "$i"; done > "$dir/state/passdb"
    sed -e "s|@PASSDB@|$dir/state/passdb|g" "$REPO/pam.d/test/csu" > "$dir/services/fast"
    [[ -z $owner ]] || chown -R "$owner" "$dir/state"
}
make_pam "$WORK/pam-proxy"
make_pam "$WORK/pam-389" dirsrv:dirsrv

say "creating two 389 instances in parallel: slapd-$NAME_A (plain) and slapd-$NAME_B (with its PAM plugin)"
DS_PORT_A=$(free_port) DS_PORT_B=$(free_port)
DS_CREATED=("$NAME_A" "$NAME_B")
"$DS_SH" create "$NAME_A" "$DS_PORT_A" "$WORK/ds-a" --ldif "$WORK/bench.ldif" 2> "$WORK/ds-a.log" & pa=$!
"$DS_SH" create "$NAME_B" "$DS_PORT_B" "$WORK/ds-b" --ldif "$WORK/bench.ldif" 2> "$WORK/ds-b.log" & pb=$!
JOB_PID=$pa; wait "$pa" || { cat "$WORK/ds-a.log" >&2; die "ds.sh create $NAME_A failed"; }
JOB_PID=$pb; wait "$pb" || { cat "$WORK/ds-b.log" >&2; die "ds.sh create $NAME_B failed"; }
JOB_PID=''
# shellcheck disable=SC1091
. "$WORK/ds-a/ds.env"   # DS_ROOT_DN, DS_SERVICE_DN, DS_SERVICE_PW_FILE are the same for both

ds_modify() {  # ds_modify PORT STATEDIR < LDIF
    timeout 30 ldapmodify -x -H "ldap://127.0.0.1:$1" -D "$DS_ROOT_DN" -y "$2/root.pw" > "$WORK/ldapmodify.log" 2>&1 \
        || { cat "$WORK/ldapmodify.log" >&2; die "ldapmodify on port $1 failed"; }
}
# Both: no access log (as in the earlier measurements: logging is 389's own cost), a
# listen backlog for (e)'s connection bursts, descriptors up to the hard limit.
for inst in "$DS_PORT_A:$WORK/ds-a" "$DS_PORT_B:$WORK/ds-b"; do
    ds_modify "${inst%%:*}" "${inst#*:}" <<EOF
dn: cn=config
changetype: modify
replace: nsslapd-accesslog-logging-enabled
nsslapd-accesslog-logging-enabled: off
-
replace: nsslapd-listen-backlog-size
nsslapd-listen-backlog-size: 4096
-
replace: nsslapd-maxdescriptors
nsslapd-maxdescriptors: $NOFILE
EOF
done
# B: 389's PAM Pass Through Auth plugin with the same fast service for the bench users
# (pamSecure FALSE: clear connections, as the proxy's route below).
ds_modify "$DS_PORT_B" "$WORK/ds-b" <<EOF
dn: cn=PAM Pass Through Auth,cn=plugins,cn=config
changetype: modify
replace: nsslapd-pluginEnabled
nsslapd-pluginEnabled: on

dn: cn=fast,cn=PAM Pass Through Auth,cn=plugins,cn=config
changetype: add
objectClass: pamConfig
objectClass: top
cn: fast
pamMissingSuffix: ALLOW
pamExcludeSuffix: cn=config
pamIDMapMethod: RDN
pamIDAttr: uid
pamFallback: FALSE
pamSecure: FALSE
pamService: fast
pamFilter: (&(objectClass=posixAccount)(uid=bench*))
EOF
say "restarting both instances (B under pam_wrapper)"
bg_wait "$DS_SH" restart "$NAME_A" 2>> "$WORK/ds-a.log" || { cat "$WORK/ds-a.log" >&2; die "restart of $NAME_A failed"; }
DS_STOP_TIMEOUT=10 bg_wait "$DS_SH" stop "$NAME_B" 2>> "$WORK/ds-b.log"
PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$WORK/pam-389/services" DS_SLAPD_LD_PRELOAD=$PAM_WRAPPER_LIB \
    bg_wait "$DS_SH" start "$NAME_B" 2>> "$WORK/ds-b.log" || { cat "$WORK/ds-b.log" >&2; die "start of $NAME_B under pam_wrapper failed"; }
DS_PID_A=$("$DS_SH" status "$NAME_A") DS_PID_B=$("$DS_SH" status "$NAME_B")

bind_code() {  # bind_code PORT DN PASSWORD: the LDAP result code of a simple bind
    local rc=0
    timeout 20 ldapwhoami -x -o nettimeout=5 -H "ldap://127.0.0.1:$1" -D "$2" -w "$3" >/dev/null 2>&1 || rc=$?
    echo "$rc"
}
[[ $(bind_code "$DS_PORT_B" "uid=bench0001,$PEOPLE" bench0001-pampw) == 0 ]] || die "PAM bind through 389's plugin failed (see /var/log/dirsrv/slapd-$NAME_B/errors)"
[[ $(bind_code "$DS_PORT_B" "uid=bench0001,$PEOPLE" bench0001-dirpw) == 49 ]] || die "389 with its plugin accepted the directory password: binds do not go through PAM"

# ---------------------------------------------------------------- relays and proxies
wait_ldap() {  # wait_ldap PORT PID LOG: until a rootDSE search answers
    local i
    for i in $(seq 200); do
        timeout 3 ldapsearch -x -o nettimeout=2 -H "ldap://127.0.0.1:$1" -b '' -s base -LLL 1.1 >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || { tail -n 20 "$3" >&2; die "process $2 exited during startup (log $3)"; }
        sleep 0.1
    done
    tail -n 20 "$3" >&2; die "nothing answers on port $1 after 20 s (log $3)"
}

declare -A PORT PID
PORT[a:direct]=$DS_PORT_A
PORT[d:direct]=$DS_PORT_B     # (d): 389 with its PAM plugin
PORT[d:dirbind]=$DS_PORT_A    # (d) reference: the same flow with directory passwords
for t in haproxy floor proxy proxy2r; do PORT[a:$t]=$(free_port); done
for t in haproxy floor proxy; do PORT[d:$t]=$(free_port); done

say "starting HAProxy (TCP mode, one thread), the floor relay and three proxies (runtime.worker_threads = 1)"
cat > "$WORK/haproxy.cfg" <<EOF
global
    maxconn $((CLIENTS + 20))
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend plain
    bind 127.0.0.1:${PORT[a:haproxy]}
    default_backend ds_plain
backend ds_plain
    server a 127.0.0.1:$DS_PORT_A
frontend plugin
    bind 127.0.0.1:${PORT[d:haproxy]}
    default_backend ds_plugin
backend ds_plugin
    server b 127.0.0.1:$DS_PORT_B
EOF
haproxy -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
PID[haproxy]=$!; PIDS+=("${PID[haproxy]}")
"$FLOOR_BIN" "127.0.0.1:${PORT[a:floor]}" "127.0.0.1:$DS_PORT_A" "127.0.0.1:${PORT[d:floor]}" "127.0.0.1:$DS_PORT_B" \
    > "$WORK/floor.log" 2>&1 &
PID[floor]=$!; PIDS+=("${PID[floor]}")

proxy_config() {  # proxy_config PORT ROUTES
    cat <<EOF
[listen]
address = "127.0.0.1:$1"
[backend]
uris = ["ldap://127.0.0.1:$DS_PORT_A"]
service_dn = "$DS_SERVICE_DN"
service_password_file = "$DS_SERVICE_PW_FILE"
[pam]
# Every login runs PAM: no joining of identical binds, no per-user attempt limit.
coalesce_grace = "0s"
max_attempts_per_minute = 1000000
[limits]
max_connections = $((CLIENTS + 100))
# Every bench client comes from 127.0.0.1.
max_connections_per_address = $((CLIENTS + 100))
shutdown_grace = "1s"
[runtime]
worker_threads = 1
$2
EOF
}
# Two routes that match no bench user: every bench bind pays the route lookup and is
# forwarded to 389's own password check.
TWO_ROUTES='
[[route]]
name = "partner"
filter = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))"
pam_service = "fast"
secure = false
[[route]]
name = "mfa-group"
filter = "(&(objectClass=posixAccount)(memberOf=cn=mfa-users,ou=Groups,dc=example,dc=com))"
pam_service = "fast"
secure = false'
# (d): the bench users bind through PAM (the fast service), as with 389's plugin.
PAM_ROUTE='
[[route]]
name = "fast"
filter = "(&(objectClass=posixAccount)(uid=bench*))"
pam_service = "fast"
id_map = ["rdn"]
secure = false'
proxy_config "${PORT[a:proxy]}" '' > "$WORK/proxy.toml"
proxy_config "${PORT[a:proxy2r]}" "$TWO_ROUTES" > "$WORK/proxy2r.toml"
proxy_config "${PORT[d:proxy]}" "$PAM_ROUTE" > "$WORK/proxyd.toml"
for p in proxy proxy2r proxyd; do
    LD_PRELOAD=$PAM_WRAPPER_LIB PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$WORK/pam-proxy/services" \
        "$PROXY_BIN" run --config "$WORK/$p.toml" > "$WORK/$p.log" 2>&1 &
    PID[$p]=$!; PIDS+=("${PID[$p]}")
done
wait_ldap "${PORT[a:haproxy]}" "${PID[haproxy]}" "$WORK/haproxy.log"
wait_ldap "${PORT[a:floor]}" "${PID[floor]}" "$WORK/floor.log"
wait_ldap "${PORT[a:proxy]}" "${PID[proxy]}" "$WORK/proxy.log"
wait_ldap "${PORT[a:proxy2r]}" "${PID[proxy2r]}" "$WORK/proxy2r.log"
wait_ldap "${PORT[d:proxy]}" "${PID[proxyd]}" "$WORK/proxyd.log"
[[ $(bind_code "${PORT[d:proxy]}" "uid=bench0001,$PEOPLE" bench0001-pampw) == 0 ]] || die "PAM bind through the proxy failed (see $WORK/proxyd.log)"
[[ $(bind_code "${PORT[d:proxy]}" "uid=bench0001,$PEOPLE" bench0001-dirpw) == 49 ]] || die "the proxy's PAM route accepted the directory password"
[[ $(bind_code "${PORT[a:proxy2r]}" "uid=bench0001,$PEOPLE" bench0001-dirpw) == 0 ]] || die "a forwarded bind through the proxy with two routes failed"

# The process whose CPU is "the relay's" for a workload and target, and 389's.
relay_pid() {  # relay_pid W T
    case $2 in
        direct|dirbind) echo '' ;;
        proxy) if [[ $1 == d ]]; then echo "${PID[proxyd]}"; else echo "${PID[proxy]}"; fi ;;
        *) echo "${PID[$2]}" ;;
    esac
}
ds_pid() { if [[ $1 == d && $2 != dirbind && $2 != proxy ]]; then echo "$DS_PID_B"; else echo "$DS_PID_A"; fi; }
port_of() { if [[ $1 == d ]]; then echo "${PORT[d:$2]}"; else echo "${PORT[a:$2]}"; fi; }
ticks() { if [[ -n $1 ]]; then sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; else echo 0; fi; }   # utime+stime
rss_kb() { if [[ -n $1 ]]; then awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; fi; }
HZ=$(getconf CLK_TCK)
us_per_op() { awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "" }'; }
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

# ---------------------------------------------------------------- measuring
declare -A RATE=() RCPU=() DCPU=() P50=() P99=() RSS=() FLAG=()
# ldclt replaces XXXX with a random number from the given range (base, filter, bind DN
# and password alike); bindeach opens a connection per operation: connect, bind, search,
# unbind.
declare -A LDCLT_ARGS=(
    [a]="-b|uid=benchXXXX,$PEOPLE|-s|base|-f|(objectClass=*)|-e|esearch,randombase,randombaselow=1,randombasehigh=$USERS"
    [b]="-b|$PEOPLE|-s|subtree|-f|(cn=Bench User 1*)|-e|esearch"
    [c]="-b|$PEOPLE|-s|subtree|-f|uid=benchXXXX|-r1|-R$USERS|-D|uid=benchXXXX,$PEOPLE|-w|benchXXXX-dirpw|-e|esearch,random,bindeach,randombinddn,randombinddnlow=1,randombinddnhigh=$USERS"
)
client_workload() { case $1 in a) echo base ;; b) echo subtree ;; c) echo connop ;; d) echo login ;; esac; }

# Every process the bench started is still there (else its log says why).
check_alive() {
    local p
    for p in haproxy floor proxy proxy2r proxyd; do
        kill -0 "${PID[$p]}" 2>/dev/null || die "$p (pid ${PID[$p]}) has exited: see $WORK/$p.log"
    done
    "$DS_SH" status "$NAME_A" > /dev/null && "$DS_SH" status "$NAME_B" > /dev/null || die "an ns-slapd has exited"
}

point() {  # point W T R: one load point and its latency probe
    local w=$1 t=$2 r=$3 port rpid dpid out r0 d0 total ok=1 line
    check_alive
    port=$(port_of "$w" "$t"); rpid=$(relay_pid "$w" "$t"); dpid=$(ds_pid "$w" "$t")
    out="$WORK/load-$w-$t-$r.out"
    r0=$(ticks "$rpid"); d0=$(ticks "$dpid")
    local perf=''
    if [[ -n ${BENCH_PERF:-} && $r == 1 && $t == proxy* && -n $rpid ]]; then
        perf record -q -g -F 499 -o "$WORK/perf-$w-$t.data" -p "$rpid" >/dev/null 2>&1 & perf=$!
    fi
    if [[ $w == d ]]; then
        local suffix=-pampw; [[ $t == dirbind ]] && suffix=-dirpw
        bg_wait "$CLIENT" ops --addr "127.0.0.1:$port" --workload login --threads "$THREADS" \
            --seconds "$MEASURE" --user-pw-suffix "$suffix" > "$out" 2>&1 || ok=0
        line=$(tail -n1 "$out")
        total=$(field ops "$line")
        [[ $(field errors "$line") == 0 ]] || ok=0
    else
        local args
        IFS='|' read -r -a args <<<"${LDCLT_ARGS[$w]}"
        bg_wait timeout --foreground $((MEASURE + 60)) ldclt -h 127.0.0.1 -p "$port" -n "$THREADS" -N $((MEASURE / 10)) \
            "${args[@]}" > "$out" 2>&1 || ok=0
        total=$(sed -n 's/.*Global average rate:.*total: *\([0-9]*\).*/\1/p' "$out" | tail -n1)
        grep -q 'Global no error occurs' "$out" || ok=0
    fi
    total=${total:-0}
    if [[ -n $perf ]]; then
        kill -INT "$perf" 2>/dev/null; wait "$perf" || true
        perf report -q -i "$WORK/perf-$w-$t.data" --stdio --no-children --percent-limit 0.7 -g none \
            > "$WORK/perf-$w-$t.txt" 2>/dev/null || true
        say "  ($w) $t: profile in $WORK/perf-$w-$t.txt"
    fi
    check_alive
    RATE[$w,$t,$r]=$(awk -v n="$total" -v s="$MEASURE" 'BEGIN { printf "%.0f", n / s }')
    RCPU[$w,$t,$r]=''
    [[ -z $rpid ]] || RCPU[$w,$t,$r]=$(us_per_op $(( $(ticks "$rpid") - r0 )) "$total")
    DCPU[$w,$t,$r]=$(us_per_op $(( $(ticks "$dpid") - d0 )) "$total")
    RSS[$w,$t,$r]=$(rss_kb "$rpid")
    (( ok )) || FLAG[$w,$t,$r]='!'
    # Latency: one connection (or one login) at a time, nothing else running.
    local suffix=-pampw; [[ $t == dirbind ]] && suffix=-dirpw
    bg_wait "$CLIENT" ops --addr "127.0.0.1:$port" --workload "$(client_workload "$w")" --threads 1 \
        --seconds "$LATENCY" --user-pw-suffix "$suffix" > "$out.latency" 2>&1 || true
    line=$(tail -n1 "$out.latency")
    P50[$w,$t,$r]=$(field p50_us "$line"); P99[$w,$t,$r]=$(field p99_us "$line")
    [[ $(field errors "$line") == 0 ]] || FLAG[$w,$t,$r]='!'
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$t" "$r" "${RATE[$w,$t,$r]}" "${RCPU[$w,$t,$r]}" \
        "${DCPU[$w,$t,$r]}" "${P50[$w,$t,$r]}" "${P99[$w,$t,$r]}" "${RSS[$w,$t,$r]}" "${FLAG[$w,$t,$r]:-}" >> "$WORK/results.tsv"
    say "  ($w) $t: ${RATE[$w,$t,$r]}/s${FLAG[$w,$t,$r]:+ (errors: see $out)}, relay ${RCPU[$w,$t,$r]:--} us/op, 389 ${DCPU[$w,$t,$r]} us/op, p50 ${P50[$w,$t,$r]} us, p99 ${P99[$w,$t,$r]} us, RSS ${RSS[$w,$t,$r]:--} kB"
}

ABC_TARGETS=(direct haproxy floor proxy proxy2r)
D_TARGETS=(direct haproxy floor proxy dirbind)
E_TARGETS=(direct haproxy floor proxy)
rotate() {  # rotate K ITEMS...: the items, starting at index K mod count
    local k=$1; shift
    local n=$# i
    local items=("$@")
    for ((i = 0; i < n; i++)); do printf '%s ' "${items[$(( (i + k) % n ))]}"; done
}

printf 'workload\ttarget\tround\tops_per_s\trelay_us_per_op\tds_us_per_op\tp50_us\tp99_us\trelay_rss_kb\tflag\n' > "$WORK/results.tsv"
say "warming up (1 s of each workload on every target)"
for t in "${ABC_TARGETS[@]}"; do for w in base subtree connop; do
    bg_wait "$CLIENT" ops --addr "127.0.0.1:$(port_of a "$t")" --workload "$w" --threads 2 --seconds 1 > /dev/null 2>&1 || true
done; done
for t in "${D_TARGETS[@]}"; do
    s=-pampw; [[ $t == dirbind ]] && s=-dirpw
    bg_wait "$CLIENT" ops --addr "127.0.0.1:$(port_of d "$t")" --workload login --threads 2 --seconds 1 --user-pw-suffix "$s" > /dev/null 2>&1 || true
done

LOADS=()
for ((r = 1; r <= ROUNDS; r++)); do
    for w in a b c d; do
        wants "$w" || continue
        if [[ $w == d ]]; then targets=("${D_TARGETS[@]}"); else targets=("${ABC_TARGETS[@]}"); fi
        LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
        say "round $r/$ROUNDS, workload ($w) (load average ${LOADS[-1]})"
        for t in $(rotate $((r - 1)) "${targets[@]}"); do point "$w" "$t" "$r"; done
    done
done

# (e): CLIENTS connections held idle, one search each, then closed; CYCLES cycles, the
# targets interleaved within each cycle.
declare -A EHOLD=() ECPU=()
if wants e; then
    for ((c = 1; c <= CYCLES; c++)); do
        LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
        say "(e) cycle $c/$CYCLES: $CLIENTS clients (load average ${LOADS[-1]})"
        for t in $(rotate $((c - 1)) "${E_TARGETS[@]}"); do
            check_alive
            rpid=$(relay_pid e "$t"); [[ -n $rpid ]] || rpid=$DS_PID_A
            r0=$(ticks "$rpid")
            bg_wait "$CLIENT" hold --addr "127.0.0.1:$(port_of e "$t")" --conns "$CLIENTS" --pid "$rpid" \
                > "$WORK/hold-$t-$c.out" 2>&1 || say "  warning: (e) $t cycle $c: $(tail -n1 "$WORK/hold-$t-$c.out")"
            EHOLD[$t,$c]=$(grep '^conns=' "$WORK/hold-$t-$c.out" | tail -n1)
            ECPU[$t,$c]=$(us_per_op $(( $(ticks "$rpid") - r0 )) "$CLIENTS")
            say "  (e) $t: ${EHOLD[$t,$c]:-failed}, CPU ${ECPU[$t,$c]} us/client"
        done
    done
fi

# ---------------------------------------------------------------- report
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[++n] = $1 } END { if (n) print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'; }
vals() {  # vals ARRAY W T: the values of every round
    local -n arr=$1; local r out=''
    for ((r = 1; r <= ROUNDS; r++)); do out+="${arr[$2,$3,$r]:-} "; done
    echo "$out"
}
ratios() {  # ratios W T BASE: per-round ratios to BASE
    local r out=''
    for ((r = 1; r <= ROUNDS; r++)); do
        out+="$(awk -v a="${RATE[$1,$2,$r]:-0}" -v b="${RATE[$1,$3,$r]:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b }') "
    done
    echo "$out"
}
fmt_us() { awk -v u="$1" 'BEGIN { if (u == "") print "-"; else if (u >= 10000) printf "%.1f ms", u / 1000; else printf "%.0f us", u }'; }
fmt_mib() { awk -v k="$1" 'BEGIN { if (k == "") print "-"; else printf "%.1f MiB", k / 1024 }'; }
range() { tr ' ' '\n' | awk 'NF { if (min == "" || $1 < min) min = $1; if ($1 > max) max = $1 } END { if (min != "") printf "%.2f-%.2f", min, max }'; }

declare -A LABEL=(
    [a:direct]="389 direct" [a:haproxy]="HAProxy (TCP)" [a:floor]="floor relay" [a:proxy]="proxy, no routes"
    [a:proxy2r]="proxy, 2 routes (no match)"
    [d:direct]="389 + its PAM plugin" [d:haproxy]="HAProxy -> 389 + plugin" [d:floor]="floor -> 389 + plugin"
    [d:proxy]="proxy, PAM route" [d:dirbind]="389, directory binds (ref.)"
)
declare -A TITLE=(
    [a]="(a) base search, persistent connections (ldclt, $THREADS threads)"
    [b]="(b) subtree search, 112 entries (ldclt, $THREADS threads)"
    [c]="(c) connect + bind + search + unbind per operation (ldclt, $THREADS threads)"
    [d]="(d) web-app login, ops = logins: service bind, user search, user bind through PAM, group search, unbind ($THREADS threads; ratio to 389 + its PAM plugin)"
)
{
    echo
    echo "ldap-pam-proxy compared with direct 389, HAProxy and a floor relay: $ROUNDS interleaved rounds, ${MEASURE}s per point,"
    echo "$(nproc) cores, loopback, $(date -u +%Y-%m-%d). Medians over the rounds; ratio = ops/s / direct 389's in the same round (min-max)."
    echo "relay CPU = the relay's own utime+stime per operation; 389 CPU = ns-slapd's; p50/p99 = one operation at a time, unloaded."
    for w in a b c d; do
        wants "$w" || continue
        if [[ $w == d ]]; then targets=("${D_TARGETS[@]}"); lw=d; else targets=("${ABC_TARGETS[@]}"); lw=a; fi
        echo
        echo "${TITLE[$w]}"
        printf '| %-28s | %8s | %-16s | %10s | %10s | %9s | %9s | %9s |\n' target "ops/s" "ratio (range)" "relay CPU" "389 CPU" p50 p99 "relay RSS"
        printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------------------ ---------- ------------------ ------------ ------------ ----------- ----------- -----------
        for t in "${targets[@]}"; do
            rat=$(ratios "$w" "$t" direct)
            flag=''; for ((r = 1; r <= ROUNDS; r++)); do [[ -n ${FLAG[$w,$t,$r]:-} ]] && flag=' !'; done
            printf '| %-28s | %8s | %-16s | %10s | %10s | %9s | %9s | %9s |\n' "${LABEL[$lw:$t]}$flag" \
                "$(vals RATE "$w" "$t" | median)" \
                "$(awk -v m="$(median <<<"$rat")" 'BEGIN { printf "%.2f", m }') ($(range <<<"$rat"))" \
                "$(fmt_us "$(vals RCPU "$w" "$t" | median)")" "$(fmt_us "$(vals DCPU "$w" "$t" | median)")" \
                "$(fmt_us "$(vals P50 "$w" "$t" | median)")" "$(fmt_us "$(vals P99 "$w" "$t" | median)")" \
                "$(fmt_mib "${RSS[$w,$t,$ROUNDS]:-}")"
        done
        if [[ $w == c ]]; then
            echo "proxy with 2 routes / proxy without, same round: $(ratios c proxy2r proxy | median | awk '{ printf "%.2f", $1 }') ($(ratios c proxy2r proxy | range))"
        fi
        if [[ $w == d ]]; then
            echo "proxy (PAM route) / HAProxy -> 389 + plugin, same round: $(ratios d proxy haproxy | median | awk '{ printf "%.2f", $1 }'); 389 directory binds / 389 + plugin: $(ratios d dirbind direct | median | awk '{ printf "%.2f", $1 }')"
        fi
    done
    if wants e; then
        echo
        echo "(e) $CLIENTS clients connect and stay idle, then each sends one search (all sent, then all read), then all"
        echo "    leave; $CYCLES cycles. RSS of the relay (389's own for the direct row): before, with the clients connected"
        echo "    and idle, after their searches, after they left. CPU = the relay's per client over the whole cycle."
        if (( CLIENTS < ${BENCH_CLIENTS:-10000} )); then
            echo "    ($CLIENTS, not ${BENCH_CLIENTS:-10000}: a relay holds two descriptors per client and the hard limit here is $NOFILE)"
        fi
        printf '| %-17s | %5s | %10s | %5s | %10s | %10s | %10s | %10s | %10s |\n' target cycle "searches/s" ratio "CPU/client" "RSS before" "connected" "searched" "left"
        printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------- ------- ------------ ------- ------------ ------------ ------------ ------------ ------------
        for t in "${E_TARGETS[@]}"; do
            name=${LABEL[a:$t]}; [[ $t == direct ]] && name="389 direct (389)"
            for ((c = 1; c <= CYCLES; c++)); do
                h=${EHOLD[$t,$c]:-}
                printf '| %-17s | %5s | %10s | %5s | %10s | %10s | %10s | %10s | %10s |\n' "$name" "$c" \
                    "$(field rate "$h")" \
                    "$(awk -v a="$(field rate "$h")" -v b="$(field rate "${EHOLD[direct,$c]:-}")" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" \
                    "$(fmt_us "${ECPU[$t,$c]:-}")" "$(fmt_mib "$(field rss_before_kb "$h")")" "$(fmt_mib "$(field rss_idle_kb "$h")")" \
                    "$(fmt_mib "$(field rss_active_kb "$h")")" "$(fmt_mib "$(field rss_after_kb "$h")")"
                name=''
            done
        done
    fi
    echo
    echo "load average (1 min) before each workload: ${LOADS[*]} (above $(nproc): other work shared the CPUs)"
    if (( ${#FLAG[@]} > 0 )); then
        echo "! a point had errors: see the outputs named in the log above (BENCH_KEEP=1 keeps them)"
    fi
} | tee "$WORK/result.txt"
say "done in $(( $(date +%s) - T0 ))s"
