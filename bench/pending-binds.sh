#!/usr/bin/env bash
# Benchmark: LDAP search throughput while N slow (MFA-like) PAM binds are pending,
# through ldap-pam-proxy and through 389 DS's own PAM Pass Through Auth plugin.
#
#   bench/pending-binds.sh          # as root; see bench/README.md
#
# Knobs (environment): BENCH_SECONDS (per point, multiple of 10; default 20),
# BENCH_DELAY (seconds a push waits; default 60), BENCH_THREADS (ldclt threads; 8),
# BENCH_PROXY_BIN (use this binary instead of building), CARGO_TARGET_DIR,
# BENCH_KEEP=1 (keep the work directory).
#
# What it does: installs/checks packages (scripts/install-deps.sh), builds the proxy
# (release), creates a throw-away 389 DS instance (tests/ds/ds.sh) holding the sample
# directory plus users bench0001..bench1100, and a pam_wrapper "duo" service whose push
# sleeps BENCH_DELAY seconds. Then it measures ldclt search throughput (8 threads,
# random exact uid searches) directly against 389 and through the proxy with N = 0,
# 100, 1000 binds pending in the proxy's PAM pool; then enables 389's PAM Pass Through
# Auth plugin with the same PAM service and measures the same load with N = 0, 16, 100
# binds pending in 389. Everything it starts (proxy, ns-slapd, clients, pushes) is
# stopped and the instance removed on exit, failure or Ctrl-C.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO BENCH="$REPO/bench" DS_SH="$REPO/tests/ds/ds.sh"
readonly PAM_WRAPPER_LIB=/usr/lib/x86_64-linux-gnu/libpam_wrapper.so
readonly PY=/usr/bin/python3
readonly PEOPLE='ou=People,dc=example,dc=com'
readonly MEASURE=${BENCH_SECONDS:-20}
readonly DELAY=${BENCH_DELAY:-60}
readonly THREADS=${BENCH_THREADS:-8}
readonly USERS=1100           # bench0001..bench1100: 1000 for N=1000, 100 more for N=100
readonly PROXY_NS=(100 1000)  # N with pending binds in the proxy (N=0 is measured too)
readonly PLUGIN_NS=(16 100)   # N with pending binds in 389's plugin (16 = its worker threads)
[[ $MEASURE =~ ^[1-9][0-9]*0$ ]] || { echo "BENCH_SECONDS must be a multiple of 10" >&2; exit 2; }
[[ $DELAY =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ ]] || { echo "BENCH_DELAY and BENCH_THREADS must be whole numbers" >&2; exit 2; }

T0=$(date +%s)
say() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (389 DS instances are system-wide)"

# ---------------------------------------------------------------- state + cleanup
WORK='' NAME="lppbench$$" DS_CREATED=0
PROXY_PID='' HOLD_PIDS=() LDCLT_PID=''
declare -A RATE RSS FLAG HOLD_NOTE BASE START_CPU CPUOP
shopt -s nullglob
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
remember_pam_copies

# Pids of the pushes (duo-push.sh and its children: sleep, cat) that our services
# started: the script's command line names our work directory. One pass over ps.
our_pushes() {
    [[ -n $WORK ]] || return 0
    ps -eo pid=,ppid=,args= | awk -v want="duo-push.sh $WORK/" '
        { parent[$1] = $2; if (index($0, want)) mark[$1] = 1 }
        END { for (p in parent) if ((p in mark) || (parent[p] in mark)) print p }'
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    (( rc == 0 )) || say "cleaning up after failure (exit $rc)"
    [[ -z $LDCLT_PID ]] || kill -KILL "$LDCLT_PID" 2>/dev/null
    local p
    for p in "${HOLD_PIDS[@]}"; do stop_pid "$p" 2; done
    [[ -z $PROXY_PID ]] || stop_pid "$PROXY_PID" 5
    if (( DS_CREATED )); then
        # Binds pending in 389's plugin keep SIGTERM from working: short wait, then SIGKILL.
        DS_STOP_TIMEOUT=3 "$DS_SH" remove "$NAME" >/dev/null 2>&1 \
            || say "warning: could not remove 389 instance $NAME (run: $DS_SH remove $NAME)"
    fi
    local pushes; pushes=$(our_pushes)
    # shellcheck disable=SC2086
    [[ -z $pushes ]] || kill -KILL $pushes 2>/dev/null
    remove_our_pam_copies
    if [[ -n $WORK && ${BENCH_KEEP:-0} != 1 ]]; then rm -rf -- "$WORK"; elif [[ -n $WORK ]]; then say "kept $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# Runs a command in the background and waits for it, so a signal interrupts the wait
# at once (bash runs traps only between foreground commands).
bg_wait() { "$@" & local pid=$!; wait "$pid"; }

# ---------------------------------------------------------------- setup
say "checking packages (scripts/install-deps.sh)"
bg_wait "$REPO/scripts/install-deps.sh"
command -v ldclt >/dev/null || die "ldclt not found (it ships with 389-ds-base)"
[[ -x $PY ]] || die "$PY not found"

if [[ -n ${BENCH_PROXY_BIN:-} ]]; then
    PROXY_BIN=$BENCH_PROXY_BIN
else
    say "building the proxy (cargo build --release)"
    (cd "$REPO" && bg_wait cargo build --release --quiet) || die "cargo build failed"
    PROXY_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/ldap-pam-proxy
fi
[[ -x $PROXY_BIN ]] || die "no proxy binary at $PROXY_BIN"

WORK=$(mktemp -d /tmp/lpp-bench.XXXXXX)
chmod 0755 "$WORK"    # ns-slapd's PAM runs as dirsrv and must reach its state directory

say "generating the directory: sample data + bench0001..bench$(printf %04d $USERS)"
{
    cat "$REPO/tests/data/sample.ldif"
    awk -v n=$USERS -v people="$PEOPLE" 'BEGIN { for (i = 1; i <= n; i++) { u = sprintf("bench%04d", i)
        printf "\ndn: uid=%s,%s\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n", u, people
        printf "objectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: %s\ncn: Bench User %d\nsn: User%d\n", u, i, i
        printf "uidNumber: %d\ngidNumber: 10000\nhomeDirectory: /home/%s\nloginShell: /bin/bash\nuserPassword: %s-dirpw\n", 20000 + i, u, u } }'
} > "$WORK/bench.ldif"

# A pam_wrapper service directory with the "duo" test service (pam.d/test/duo): a push
# script that records "<user> <rhost>" in STATE/duo-pushes and sleeps STATE/duo-delay
# seconds, then pam_matrix with every user's PAM password (<uid>-pampw).
make_pam() {  # make_pam DIR [owner]
    local dir=$1 owner=${2:-}
    mkdir -p "$dir/services" "$dir/state"
    { echo "alice:alice-pampw:duo"; for ((i = 1; i <= USERS; i++)); do printf 'bench%04d:bench%04d-pampw:duo\n' "$i" "$i"; done; } > "$dir/state/passdb"
    echo 0 > "$dir/state/duo-delay"
    : > "$dir/state/duo-pushes"
    sed -e "s|@PASSDB@|$dir/state/passdb|g; s|@STATE@|$dir/state|g; s|@SCRIPTS@|$REPO/tests/pam|g" \
        "$REPO/pam.d/test/duo" > "$dir/services/duo"
    [[ -z $owner ]] || chown -R "$owner" "$dir/state"
}
make_pam "$WORK/pam-proxy"
make_pam "$WORK/pam-389" dirsrv:dirsrv

say "creating 389 DS instance slapd-$NAME"
DS_PORT=$(free_port)
DS_CREATED=1
bg_wait "$DS_SH" create "$NAME" "$DS_PORT" "$WORK/ds" --ldif "$WORK/bench.ldif" 2> "$WORK/ds-create.log" \
    || { cat "$WORK/ds-create.log" >&2; die "ds.sh create failed"; }
# shellcheck disable=SC1091
. "$WORK/ds/ds.env"

# ---------------------------------------------------------------- helpers
pushes() { wc -l < "$1/state/duo-pushes"; }

# ldclt: THREADS threads, each on its own connection, random exact searches
# (uid=benchNNNN) under ou=People for MEASURE seconds; sets RATE[LABEL] (searches/s)
# and, through the proxy, CPUOP[LABEL]: the proxy's CPU time per search (microseconds),
# which other work on the machine disturbs much less than throughput.
# Runs in this shell (not in $(...)) so that cleanup knows ldclt's pid.
load() {  # load PORT LABEL
    local port=$1 label=$2 out="$WORK/ldclt-$2.out" c0=''
    [[ -z $PROXY_PID || $port != "${PROXY_PORT:-}" ]] || c0=$(cpu_ticks "$PROXY_PID")
    ldclt -h 127.0.0.1 -p "$port" -b "$PEOPLE" -s subtree -e esearch,random \
        -f uid=benchXXXX -r1 -R$USERS -n "$THREADS" -N $((MEASURE / 10)) -I 81 -I 85 -E 100000 \
        > "$out" 2>&1 &
    LDCLT_PID=$!
    local waited=0
    while kill -0 "$LDCLT_PID" 2>/dev/null && (( waited < (MEASURE + 40) * 2 )); do sleep 0.5; waited=$((waited + 1)); done
    if kill -0 "$LDCLT_PID" 2>/dev/null; then kill -KILL "$LDCLT_PID" 2>/dev/null; echo "ldclt killed: did not stop" >> "$out"; fi
    wait "$LDCLT_PID" 2>/dev/null || true
    LDCLT_PID=''
    # "Global average rate: 12130.50/thr  (9704.40/sec), total:  97044"
    local total
    total=$(sed -n 's/.*Global average rate:.*total: *\([0-9]*\).*/\1/p' "$out" | tail -n1)
    RATE[$label]=$(awk -v t="${total:-0}" -v s="$MEASURE" 'BEGIN { printf "%.0f", t / s }')
    if [[ -n $c0 ]]; then
        CPUOP[$label]=$(awk -v c="$(( $(cpu_ticks "$PROXY_PID") - c0 ))" -v hz="$(getconf CLK_TCK)" -v t="${total:-0}" \
            'BEGIN { if (t > 0) printf "%.1f", c / hz * 1e6 / t; else print "n/a" }')
    fi
}

# Starts hold-binds.py in the background: one simple bind per user, not waited for.
hold() {  # hold PORT USERS STATUSFILE
    "$PY" "$BENCH/hold-binds.py" --port "$1" --users "$2" --base "$PEOPLE" \
        --status "$3" --wait $((DELAY + 120)) > "$3.out" 2>&1 &
    HOLD_PIDS+=($!)
}
status_field() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" "$1" 2>/dev/null; }

# Waits until the pushes file has grown to WANT lines and the client sent every bind
# with none answered: the binds are then pending inside PAM.
wait_pending() {  # wait_pending PAMDIR WANT STATUSFILE SENT LIMIT_SECONDS
    local dir=$1 want=$2 st=$3 sent=$4 limit=$5 t=0
    while (( t < limit * 10 )); do
        if [[ $(status_field "$st" sent) == "$sent" ]] && (( $(pushes "$dir") >= want )); then
            [[ $(status_field "$st" answered) == 0 ]] || die "binds were answered before they were all pending: $(cat "$st")"
            return 0
        fi
        sleep 0.1; t=$((t + 1))
    done
    say "  warning: binds not all pending after ${limit}s: pushes $(pushes "$dir")/$want, client: $(cat "$st" 2>/dev/null)"
    return 1
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
threads_of() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }   # utime + stime, clock ticks

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

# A simple bind with a timeout; prints the LDAP result code.
bind_code() {  # bind_code URI UID PASSWORD
    local rc=0
    timeout 20 ldapwhoami -x -o nettimeout=5 -H "$1" -D "uid=$2,$PEOPLE" -w "$3" >/dev/null 2>&1 || rc=$?
    echo "$rc"
}

# ---------------------------------------------------------------- proxy
PROXY_CONF="$WORK/proxy.toml"
cat > "$PROXY_CONF" <<EOF
# ldap-pam-proxy configuration of the pending-binds benchmark
[listen]
address = "127.0.0.1:0"

[backend]
uris = ["$DS_URI"]
service_dn = "$DS_SERVICE_DN"
service_password_file = "$DS_SERVICE_PW_FILE"

[pam]
# Every pending bind holds a worker thread inside libpam: workers >= the largest N.
workers = 1100
queue = 2048
max_attempts_per_minute = 1000

[limits]
shutdown_grace = "2s"

[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
# Clear connections: the benchmark measures PAM and relay, not TLS.
secure = false
timeout = "$((DELAY + 120))s"
EOF

say "starting the proxy (pam.workers = 1100) in front of $DS_URI"
LD_PRELOAD=$PAM_WRAPPER_LIB PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$WORK/pam-proxy/services" \
    RUST_LOG=info "$PROXY_BIN" run --config "$PROXY_CONF" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PROXY_PORT=''
for _ in $(seq 200); do
    PROXY_PORT=$(sed -n 's/.*listening address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/proxy.log" | head -n1)
    [[ -n $PROXY_PORT ]] && break
    kill -0 "$PROXY_PID" 2>/dev/null || { cat "$WORK/proxy.log" >&2; die "proxy exited"; }
    sleep 0.1
done
[[ -n $PROXY_PORT ]] || { cat "$WORK/proxy.log" >&2; die "proxy did not listen within 20s"; }
PROXY_URI="ldap://127.0.0.1:$PROXY_PORT"

# Sanity: the PAM password works through the proxy, the directory password does not
# (so binds of internal users really go through PAM).
[[ $(bind_code "$PROXY_URI" alice alice-pampw) == 0 ]] || die "PAM bind through the proxy failed (see $WORK/proxy.log)"
[[ $(bind_code "$PROXY_URI" alice alice-dirpw) == 49 ]] || die "directory password accepted through the proxy: binds do not go through PAM"
echo "$DELAY" > "$WORK/pam-proxy/state/duo-delay"

LOADS=()
LAST_LOAD=''
loadavg() { LAST_LOAD=$(cut -d' ' -f1 /proc/loadavg); LOADS+=("$LAST_LOAD"); }

# N=0 is measured before, between and after the pending-bind points, and each point is
# compared with the mean of the two N=0 measurements around it: other work on the
# machine drifts over minutes, and this keeps that drift out of the ratios.
loadavg; say "load: direct 389, N=0 (${MEASURE}s; load average $LAST_LOAD)"
load "$DS_PORT" d1
say "  direct 389: ${RATE[d1]}/s"
zero=1
load_zero() {
    loadavg; say "load: proxy, N=0 (#$zero, ${MEASURE}s; load average $LAST_LOAD)"
    load "$PROXY_PORT" "p0_$zero"
    say "  proxy N=0 (#$zero): ${RATE[p0_$zero]}/s, proxy CPU ${CPUOP[p0_$zero]} us/search, RSS $(( $(rss_kb "$PROXY_PID") / 1024 )) MiB, $(threads_of "$PROXY_PID") threads"
    zero=$((zero + 1))
}
load_zero
RSS[p0]=$(rss_kb "$PROXY_PID")

declare -A USERS_FOR=([100]="bench1001..bench1100" [1000]="bench0001..bench1000") RAMP
for n in "${PROXY_NS[@]}"; do
    st="$WORK/hold-proxy-$n.status"
    before=$(pushes "$WORK/pam-proxy")
    say "holding $n binds through the proxy (${DELAY}s pushes)"
    t_hold=$(date +%s)
    cpu_start=$(cpu_ticks "$PROXY_PID")
    hold "$PROXY_PORT" "${USERS_FOR[$n]}" "$st"
    hold_pid=${HOLD_PIDS[-1]}
    wait_pending "$WORK/pam-proxy" $((before + n)) "$st" "$n" $((DELAY - MEASURE - 5)) || FLAG[p$n]=' (*)'
    RAMP[$n]=$(( $(date +%s) - t_hold ))
    START_CPU[$n]=$(( ($(cpu_ticks "$PROXY_PID") - cpu_start) * 1000000 / $(getconf CLK_TCK) / n ))
    loadavg; say "  $n binds pending (${RAMP[$n]}s to start them all; proxy CPU $((START_CPU[$n] / 1000)).$(( START_CPU[$n] % 1000 / 100 )) ms per bind started); load (${MEASURE}s; load average $LAST_LOAD)"
    load "$PROXY_PORT" "p$n"
    RSS[p$n]=$(rss_kb "$PROXY_PID")
    answered=$(status_field "$st" answered)
    if [[ $answered != 0 ]]; then
        FLAG[p$n]=' (*)'
        say "  warning: $answered of the $n binds were answered during the measurement: the point had fewer than $n pending"
    fi
    rss_now=${RSS[p$n]}
    say "  proxy N=$n: ${RATE[p$n]}/s, RSS $((rss_now / 1024)) MiB, $(threads_of "$PROXY_PID") threads, proxy CPU ${CPUOP[p$n]} us/search"
    say "  waiting for the $n binds to finish"
    wait "$hold_pid" || true
    HOLD_NOTE[$n]=$(cat "$st.out")
    say "  client: ${HOLD_NOTE[$n]}"
    before_rate=${RATE[p0_$((zero - 1))]}
    load_zero
    BASE[$n]=$(awk -v a="$before_rate" -v b="${RATE[p0_$((zero - 1))]}" 'BEGIN { printf "%.0f", (a + b) / 2 }')
done
loadavg; say "load: direct 389, N=0 again (${MEASURE}s; load average $LAST_LOAD)"
load "$DS_PORT" d2
say "  direct 389: ${RATE[d2]}/s"
RSS[hwm]=$(hwm_kb "$PROXY_PID")
PROXY_THREADS=$(threads_of "$PROXY_PID")
stop_pid "$PROXY_PID" 10
PROXY_PID=''

# ---------------------------------------------------------------- 389's own plugin
say "enabling 389's PAM Pass Through Auth plugin (service duo, pamSecure FALSE)"
timeout 30 ldapmodify -x -H "$DS_URI" -D "$DS_ROOT_DN" -y "$DS_ROOT_PW_FILE" > "$WORK/plugin.log" 2>&1 <<EOF || { cat "$WORK/plugin.log" >&2; die "ldapmodify of the plugin failed"; }
dn: cn=PAM Pass Through Auth,cn=plugins,cn=config
changetype: modify
replace: nsslapd-pluginEnabled
nsslapd-pluginEnabled: on

dn: cn=duo,cn=PAM Pass Through Auth,cn=plugins,cn=config
changetype: add
objectClass: pamConfig
objectClass: top
cn: duo
pamMissingSuffix: ALLOW
pamExcludeSuffix: cn=config
pamIDMapMethod: RDN ENTRY
pamIDAttr: uid
pamFallback: FALSE
pamSecure: FALSE
pamService: duo
pamFilter: (&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))
EOF
THREADNUMBER=$(timeout 10 ldapsearch -x -LLL -o ldif-wrap=no -H "$DS_URI" -D "$DS_ROOT_DN" -y "$DS_ROOT_PW_FILE" \
    -b cn=config -s base nsslapd-threadnumber | sed -n 's/^nsslapd-threadnumber: //p')
say "restarting ns-slapd under pam_wrapper (nsslapd-threadnumber $THREADNUMBER)"
DS_STOP_TIMEOUT=10 bg_wait "$DS_SH" stop "$NAME" 2>> "$WORK/ds.log"
PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$WORK/pam-389/services" DS_SLAPD_LD_PRELOAD=$PAM_WRAPPER_LIB \
    bg_wait "$DS_SH" start "$NAME" 2>> "$WORK/ds.log" || { cat "$WORK/ds.log" >&2; die "ns-slapd did not start with the plugin"; }
[[ $(bind_code "$DS_URI" alice alice-pampw) == 0 ]] || die "PAM bind through 389's plugin failed (see $DS_ERRORS_LOG)"
[[ $(bind_code "$DS_URI" alice alice-dirpw) == 49 ]] || die "directory password accepted by 389 with the plugin: binds do not go through PAM"
echo "$DELAY" > "$WORK/pam-389/state/duo-delay"

say "load: 389 with plugin, N=0 (${MEASURE}s)"
load "$DS_PORT" g0
say "  389 plugin N=0: ${RATE[g0]}/s"
prev_users=0
for n in "${PLUGIN_NS[@]}"; do
    st="$WORK/hold-389-$n.status"
    add=$((n - prev_users))
    say "holding $n binds in 389 ($add more, sent directly to 389)"
    before=$(pushes "$WORK/pam-389")
    hold "$DS_PORT" "$(printf 'bench%04d..bench%04d' $((prev_users + 1)) "$n")" "$st"
    # The plugin runs one PAM conversation at a time: only the first bind reaches the push
    # script, the others wait for it inside 389's worker threads.
    if (( prev_users == 0 )); then want=$((before + 1)); else want=$before; fi
    wait_pending "$WORK/pam-389" "$want" "$st" "$add" 30 || FLAG[g$n]=' (*)'
    sleep 1
    say "  load (${MEASURE}s)"
    load "$DS_PORT" "g$n"
    say "  389 plugin N=$n: ${RATE[g$n]}/s (pushes started so far: $(pushes "$WORK/pam-389"))"
    prev_users=$n
done

# ---------------------------------------------------------------- report
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
mean() { awk 'BEGIN { for (i = 1; i < ARGC; i++) s += ARGV[i]; printf "%.0f", s / (ARGC - 1) }' "$@"; }
zeros=()
for ((i = 1; i < zero; i++)); do zeros+=("${RATE[p0_$i]}"); done
P0=$(mean "${zeros[@]}")
cpus=()
for ((i = 1; i < zero; i++)); do cpus+=("${CPUOP[p0_$i]}"); done
P0CPU=$(awk 'BEGIN { for (i = 1; i < ARGC; i++) s += ARGV[i]; printf "%.1f", s / (ARGC - 1) }' "${cpus[@]}")
D0=$(mean "${RATE[d1]}" "${RATE[d2]}")
{
    echo
    echo "Search throughput while N slow binds (${DELAY}s pushes) are pending"
    echo "(ldclt, $THREADS threads, random uid=benchNNNN subtree searches, ${MEASURE}s per point, loopback, $(nproc) cores)"
    echo
    row() { printf '| %-5s | %18s | %9s | %15s | %21s | %9s |\n' "$@"; }
    row N "proxy searches/s" "ratio" "proxy CPU/op" "389 plugin searches/s" "ratio"
    printf '|%s|%s|%s|%s|%s|%s|\n' -------  -------------------- ----------- ----------------- ----------------------- -----------
    row 0 "$P0 (b)" 1.00 "$P0CPU us (b)" "${RATE[g0]}" 1.00
    row 16 "-" "-" "-" "${RATE[g16]}${FLAG[g16]:-}" "$(ratio "${RATE[g16]}" "${RATE[g0]}")"
    row 100 "${RATE[p100]}${FLAG[p100]:-}" "$(ratio "${RATE[p100]}" "${BASE[100]}")" "${CPUOP[p100]} us" "${RATE[g100]}${FLAG[g100]:-}" "$(ratio "${RATE[g100]}" "${RATE[g0]}")"
    row 1000 "${RATE[p1000]}${FLAG[p1000]:-}" "$(ratio "${RATE[p1000]}" "${BASE[1000]}")" "${CPUOP[p1000]} us" "n/a (a)" "n/a"
    echo
    echo "direct 389 (no plugin), N=0: ${RATE[d1]}/s and ${RATE[d2]}/s (first and last point); proxy/direct at N=0: $(ratio "$P0" "$D0")"
    echo "proxy RSS (VmRSS): $(mib "${RSS[p0]}") MiB at N=0, $(mib "${RSS[p100]}") MiB at N=100, $(mib "${RSS[p1000]}") MiB at N=1000 (peak $(mib "${RSS[hwm]}") MiB; $PROXY_THREADS threads)"
    echo "the pending binds, once released: N=100: ${HOLD_NOTE[100]}"
    echo "                                  N=1000: ${HOLD_NOTE[1000]}"
    echo "  (first/last: seconds after the last bind was sent; starting all 1000 pushes took ${RAMP[1000]}s,"
    echo "  and the proxy spent $(awk -v u="${START_CPU[1000]}" 'BEGIN { printf "%.1f", u / 1000 }') ms of CPU per bind started, mostly in the kernel: pam_exec forks the proxy)"
    [[ -z ${FLAG[*]:-} ]] || echo "(*) fewer than N binds were pending during the whole point (slow start of the pushes on a loaded machine): see the log above"
    echo "(a) 389's plugin runs one PAM conversation at a time and each waiting bind holds one of its"
    echo "    $THREADNUMBER worker threads: from N=$THREADNUMBER on it serves nothing, and 1000 binds of ${DELAY}s would"
    echo "    take $((1000 * DELAY / 60)) minutes to drain one after another, so N=1000 is not measured."
    echo "(b) mean of the proxy's N=0 points measured before, between and after the pending points:"
    echo "    ${zeros[*]} searches/s (proxy CPU ${cpus[*]} us/search); each ratio compares a point"
    echo "    with the mean of the two N=0 points around it."
    echo "load average (1 min) before each point: ${LOADS[*]} (above $(nproc): other work shared the CPUs)"
    target=$(awk -v a="${RATE[p1000]}" -v b="${BASE[1000]}" 'BEGIN { print (b > 0 && a / b >= 0.95) ? "met" : "MISSED" }')
    echo "target ratio >= 0.95 at N=1000 through the proxy: $target"
} | tee "$WORK/result.txt"
say "done in $(( $(date +%s) - T0 ))s"
