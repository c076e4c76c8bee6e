#!/usr/bin/env bash
# CI check of the README's first command, scripts/demo.sh, as a newcomer meets it:
#
#   1. from a clean state: no 389 instance slapd-lpp-demo, no /var/lib/ldap-pam-proxy-demo,
#      no demo PAM service (duo, csu) in /etc/pam.d. A demo left running is removed first
#      (scripts/demo.sh remove); PAM service files in /etc/pam.d are the host's, so their
#      presence fails the check instead (the demo must not depend on them);
#   2. runs scripts/demo.sh and times it;
#   3. runs every command the demo prints under "Try:", exactly as printed, and checks
#      what each one answers (both routes, 13 on clear text, a forwarded bind, two
#      identical binds sharing one push, the metrics). A printed command this script has
#      no expectation for fails the check, so the two cannot drift apart;
#   4. reruns scripts/demo.sh (it reuses the instance) and checks a bind;
#   5. scripts/demo.sh remove, and checks that nothing of the demo is left.
#
#   scripts/demo-check.sh        # as root, from any directory; exit 0 when all holds
set -euo pipefail

readonly SELF=demo-check.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly DEMO=$SCRIPT_DIR/demo.sh
readonly INSTANCE_DIR=/etc/dirsrv/slapd-lpp-demo
readonly STATE=/var/lib/ldap-pam-proxy-demo
readonly PROXY_PORT=1389
readonly SUFFIX=dc=example,dc=com

log() { echo "$SELF: $*" >&2; }
fail() { echo "$SELF: FAILED: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (the demo installs packages and runs a 389 instance)"

work=$(mktemp -d /tmp/demo-check.XXXXXX)
cleanup() {
    local rc=$?
    if [[ -e $INSTANCE_DIR || -e $STATE ]]; then
        if (( rc != 0 )) && [[ -r $STATE/proxy.log ]]; then
            echo "---- last lines of $STATE/proxy.log ----" >&2
            tail -n 40 "$STATE/proxy.log" >&2 || true
        fi
        "$DEMO" remove >/dev/null 2>&1 || echo "$SELF: warning: scripts/demo.sh remove failed" >&2
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

nothing_of_the_demo() {
    local left=()
    [[ -e $INSTANCE_DIR ]] && left+=("$INSTANCE_DIR")
    [[ -e $STATE ]] && left+=("$STATE")
    pgrep -f -- "--config $STATE/ldap-pam-proxy.toml" >/dev/null 2>&1 && left+=("a demo proxy process")
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT" 2>/dev/null; then
        left+=("a listener on 127.0.0.1:$PROXY_PORT")
    fi
    if (( ${#left[@]} )); then
        printf '%s\n' "${left[@]}"
        return 1
    fi
}

# ---- 1. a clean state -------------------------------------------------------------------
for svc in duo csu; do
    [[ ! -e /etc/pam.d/$svc ]] \
        || fail "/etc/pam.d/$svc exists on this host: the check cannot show that the demo works without it"
done
if [[ -e $INSTANCE_DIR || -e $STATE ]]; then
    log "removing the demo left on this machine (scripts/demo.sh remove)"
    "$DEMO" remove
fi
left=$(nothing_of_the_demo) || fail "not a clean state: $left"

# ---- 2. the README's first command --------------------------------------------------------
log "running scripts/demo.sh from a clean state"
start=$(date +%s)
"$DEMO" | tee "$work/printed"
demo_seconds=$(( $(date +%s) - start ))
log "scripts/demo.sh took ${demo_seconds}s"

# ---- 3. what it prints ------------------------------------------------------------------
# The commands of the "Try:" block: indented lines that are not comments.
sed -n '/^Try:$/,/^PAM users:/p' "$work/printed" \
    | sed -n 's/^  \([^ #].*\)$/\1/p' >"$work/commands"
(( $(wc -l <"$work/commands") >= 8 )) \
    || fail "the demo printed $(wc -l <"$work/commands") commands to try, expected at least 8:
$(cat "$work/printed")"

pushes=$STATE/pam/duo-pushes
lines_of() { grep -c -- "$1" "$work/out" || true; }
checked=0
while IFS= read -r cmd; do
    log "try: $cmd"
    set +e
    case $cmd in
        "export "*)
            eval "$cmd"
            rc=$?
            : >"$work/out"
            ;;
        *)
            timeout 60 bash -c "$cmd" >"$work/out" 2>&1
            rc=$?
            ;;
    esac
    set -e
    sed 's/^/    | /' "$work/out" >&2
    why=""
    case $cmd in
        "export LDAPTLS_CACERT="*)
            [[ $rc == 0 && -r ${LDAPTLS_CACERT:-} ]] || why="the demo CA is not readable"
            ;;
        "ldapsearch -x -H ldap://"*"'(uid=alice)'")
            [[ $rc == 0 ]] && grep -q "^dn: uid=alice,ou=People,$SUFFIX$" "$work/out" \
                || why="exit $rc, no alice entry"
            ;;
        "ldapwhoami -x -ZZ -H ldap://"*" -D uid=alice,"*)
            [[ $rc == 0 ]] && grep -qx "dn:uid=alice,ou=People,$SUFFIX" "$work/out" \
                || why="exit $rc: alice's duo bind over StartTLS failed"
            ;;
        "ldapwhoami -x -H ldaps://"*" -D uid=erin,"*)
            [[ $rc == 0 ]] && grep -qx "dn:uid=erin,ou=People,$SUFFIX" "$work/out" \
                || why="exit $rc: erin's csu bind over LDAPS failed"
            ;;
        "ldapwhoami -x -H ldap://"*" -D uid=erin,"*)
            [[ $rc == 13 ]] || why="exit $rc, not 13 (confidentialityRequired) for a clear-text bind"
            ;;
        "ldapwhoami -x -ZZ -H ldap://"*" -D uid=noposix,"*)
            # 389 answers WhoAmI itself, in its own spelling.
            [[ $rc == 0 ]] && grep -qixE "dn: ?uid=noposix,ou=people,$SUFFIX" "$work/out" \
                || why="exit $rc: the forwarded bind failed"
            ;;
        "for i in 1 2; do ldapwhoami "*" -D uid=bob,"*)
            [[ $rc == 0 && $(lines_of "^dn:uid=bob,ou=People,$SUFFIX$") == 2 ]] \
                || why="exit $rc: not two successful binds as bob"
            ;;
        "tail -n 2 $pushes")
            # One push for alice, one for both of bob's binds.
            [[ $rc == 0 && $(wc -l <"$pushes") == 2 ]] \
                && [[ $(sed -n 1p "$pushes") == "alice 127.0.0.1" && $(sed -n 2p "$pushes") == "bob 127.0.0.1" ]] \
                || why="exit $rc; the pushes were: $(tr '\n' ';' <"$pushes")"
            ;;
        "curl -s http://"*"/metrics | grep "*)
            [[ $rc == 0 ]] \
                && grep -q '^ldap_pam_proxy_pam_workers{state="busy"} 0$' "$work/out" \
                && grep -q '^ldap_pam_proxy_binds_total{route="duo",result="success"} 3$' "$work/out" \
                && grep -q '^ldap_pam_proxy_binds_total{route="csu",result="success"} 1$' "$work/out" \
                || why="exit $rc: the metrics do not show the binds above"
            ;;
        *)
            why="scripts/demo-check.sh has no expectation for this command: add one"
            ;;
    esac
    [[ -z $why ]] || fail "'$cmd': $why"
    checked=$((checked + 1))
done <"$work/commands"

metrics=$(curl -sf "http://127.0.0.1:9090/metrics") || fail "no /metrics"
grep -q '^ldap_pam_proxy_binds_coalesced_total 1$' <<<"$metrics" \
    || fail "bob's second bind did not join the first: $(grep coalesced <<<"$metrics")"
grep -q '^ldap_pam_proxy_binds_forwarded_total{reason="no route matches"} 1$' <<<"$metrics" \
    || fail "the noposix bind was not forwarded: $(grep forwarded <<<"$metrics")"
[[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/readyz) == 200 ]] \
    || fail "/readyz is not 200"
"$DEMO" status >&2 || fail "scripts/demo.sh status"
log "all $checked printed commands answered as expected"

# ---- 4. again: it reuses the instance -----------------------------------------------------
log "rerunning scripts/demo.sh"
"$DEMO" >"$work/printed-again" || fail "the second run of scripts/demo.sh"
out=$(LDAPTLS_CACERT=$STATE/tls/ca.crt timeout 60 ldapwhoami -x -H ldaps://127.0.0.1:1636 \
    -D "uid=erin,ou=People,$SUFFIX" -w erin-csu-pw) || fail "erin's bind after the rerun"
[[ $out == "dn:uid=erin,ou=People,$SUFFIX" ]] || fail "erin's bind after the rerun: $out"

# ---- 5. removed -----------------------------------------------------------------------
"$DEMO" remove
left=$(nothing_of_the_demo) || fail "scripts/demo.sh remove left: $left"
log "ok: the demo came up from a clean state in ${demo_seconds}s, answered all $checked printed commands, and was removed"
