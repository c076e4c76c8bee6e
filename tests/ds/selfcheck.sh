#!/usr/bin/env bash
# Check that a 389 DS instance made by tests/ds/ds.sh create with
# tests/data/sample.ldif has the data and ACIs the proxy's tests rely on.
#
#   tests/ds/selfcheck.sh STATEDIR      # reads STATEDIR/ds.env; exit 1 if any check fails
#
# Read-only except for alice's description, which it sets and deletes again.
set -euo pipefail

(( $# == 1 )) || { echo "usage: $0 STATEDIR" >&2; exit 2; }
env_file="$1/ds.env"
[[ -r $env_file ]] || { echo "selfcheck: error: $env_file not readable (run tests/ds/ds.sh create first)" >&2; exit 2; }
# shellcheck disable=SC1090
. "$env_file"

P="ou=People,$DS_SUFFIX"
ALICE="uid=alice,$P"
SVC_PW=$(cat "$DS_SERVICE_PW_FILE")
T=(timeout 10)
LS=(ldapsearch -x -LLL -o ldif-wrap=no -o nettimeout=5 -H "$DS_URI")
failed=0 passed=0

ok() { echo "ok   - $1"; passed=$((passed + 1)); }
fail() { echo "FAIL - $1"; [[ -z ${2:-} ]] || head -n 12 <<<"$2" | sed "s/^/       /"; failed=$((failed + 1)); }
# check DESCRIPTION: run the rest of the arguments as a condition
check() { local d=$1; shift; if out=$("$@" 2>&1); then ok "$d"; else fail "$d" "$out"; fi; }
# rc_is WANT CMD...: exit code of CMD is WANT
rc_is() { local want=$1 rc=0; shift; "${T[@]}" "$@" >/dev/null 2>&1 || rc=$?; [[ $rc == "$want" ]] || { echo "exit code $rc, want $want"; return 1; }; }
count() { grep -c "$1" || true; }

# 1. anonymous: entries, but no protected attributes even when asked for
anon_people() {
    local out n
    out=$("${T[@]}" "${LS[@]}" -b "$P" '(objectClass=*)' '*' mail telephoneNumber userPassword nsAccountLock)
    n=$(count '^dn: ' <<<"$out")
    (( n >= 50 )) || { echo "only $n entries"; return 1; }
    ! grep -Ei '^(mail|telephoneNumber|userPassword|nsAccountLock)::? ' <<<"$out" || { echo "protected attribute visible"; return 1; }
    grep -q '^uidNumber: ' <<<"$out" || { echo "no uidNumber (public attributes hidden?)"; return 1; }
}
check "anonymous search of ou=People returns entries but no mail/telephoneNumber/userPassword/nsAccountLock" anon_people

anon_groups() {
    local out
    out=$("${T[@]}" "${LS[@]}" -b "ou=Groups,$DS_SUFFIX" '(|(cn=hpcusers)(cn=grafana-admins))' memberUid member)
    if ! grep -qx 'memberUid: erin' <<<"$out" || ! grep -qix "member: $ALICE" <<<"$out"; then echo "$out"; return 1; fi
}
check "anonymous reads posixGroup memberUid and groupOfNames member" anon_groups

gen_users() {
    local n
    n=$("${T[@]}" "${LS[@]}" -b "$P" '(&(objectClass=posixAccount)(uid=user0*))' 1.1 | count '^dn: ')
    [[ $n == 40 ]] || { echo "$n generated users, want 40"; return 1; }
}
check "40 generated users user001..user040" gen_users

# 2. self: alice sees her own mail, not bob's
alice_mail() {
    local out
    out=$("${T[@]}" "${LS[@]}" -D "$ALICE" -w alice-dirpw -b "$P" '(|(uid=alice)(uid=bob))' mail)
    grep -qx 'mail: alice@example.com' <<<"$out" || { echo "alice cannot read her mail"; echo "$out"; return 1; }
    ! grep -q 'mail: bob@' <<<"$out" || { echo "alice reads bob's mail"; return 1; }
    [[ $(count '^dn: ' <<<"$out") == 2 ]] || { echo "$out"; return 1; }
}
check "alice (alice-dirpw) sees her own mail but not bob's" alice_mail
check "alice with a wrong password gets invalidCredentials (49)" \
    rc_is 49 ldapwhoami -x -o nettimeout=5 -H "$DS_URI" -D "$ALICE" -w wrong
for u in bob erin noposix user017; do
    check "$u binds with $u-dirpw" rc_is 0 ldapwhoami -x -o nettimeout=5 -H "$DS_URI" -D "uid=$u,$P" -w "$u-dirpw"
done
check "application account cn=grafana binds with grafana-pw" \
    rc_is 0 ldapwhoami -x -o nettimeout=5 -H "$DS_URI" -D "cn=grafana,ou=Services,$DS_SUFFIX" -w grafana-pw

self_write() {
    printf 'dn: %s\nchangetype: modify\nreplace: description\ndescription: selfcheck\n\ndn: %s\nchangetype: modify\ndelete: description\n' "$ALICE" "$ALICE" \
        | "${T[@]}" ldapmodify -x -o nettimeout=5 -H "$DS_URI" -D "$ALICE" -w alice-dirpw >/dev/null
}
check "alice may write her own description" self_write
other_write() {
    printf 'dn: uid=bob,%s\nchangetype: modify\nreplace: description\ndescription: selfcheck\n' "$P" \
        | rc_is 50 ldapmodify -x -o nettimeout=5 -H "$DS_URI" -D "$ALICE" -w alice-dirpw
}
check "alice may not write bob's description (50)" other_write

# 3. proxied authorization as alice: exactly alice's mail
proxied() {
    local out
    out=$("${T[@]}" "${LS[@]}" -D "$DS_SERVICE_DN" -w "$SVC_PW" -e "!authzid=dn:$ALICE" -b "$P" '(mail=*)' mail)
    if [[ $(count '^dn: ' <<<"$out") != 1 || $(count '^mail: ' <<<"$out") != 1 ]] || ! grep -qx 'mail: alice@example.com' <<<"$out"; then
        echo "$out"; return 1
    fi
}
check "service account with proxied authz as alice finds exactly alice's mail" proxied
proxied_suffix() {
    local n
    n=$("${T[@]}" "${LS[@]}" -D "$DS_SERVICE_DN" -w "$SVC_PW" -e "!authzid=dn:$ALICE" -b "$DS_SUFFIX" '(objectClass=posixGroup)' 1.1 | count '^dn: ')
    (( n >= 3 )) || { echo "$n groups"; return 1; }
}
check "service account with proxied authz as alice reads groups from the suffix root" proxied_suffix

# 4. the service account reads nsAccountLock (anonymous does not), never userPassword
svc_lock() {
    local out
    out=$("${T[@]}" "${LS[@]}" -D "$DS_SERVICE_DN" -w "$SVC_PW" -b "uid=lockeduser,$P" -s base nsAccountLock)
    grep -qix 'nsAccountLock: true' <<<"$out" || { echo "$out"; return 1; }
}
check "service account reads lockeduser's nsAccountLock: true" svc_lock
anon_lock() {
    local out
    out=$("${T[@]}" "${LS[@]}" -b "uid=lockeduser,$P" -s base nsAccountLock)
    ! grep -qi '^nsAccountLock' <<<"$out" || { echo "$out"; return 1; }
}
check "anonymous does not read nsAccountLock" anon_lock
svc_nopw() {
    local out
    out=$("${T[@]}" "${LS[@]}" -D "$DS_SERVICE_DN" -w "$SVC_PW" -b "$P" '(uid=alice)' userPassword mail)
    if grep -qi '^userPassword' <<<"$out" || ! grep -q '^mail: ' <<<"$out"; then echo "$out"; return 1; fi
}
check "service account reads mail but not userPassword" svc_nopw

# 5. a locked account cannot bind
check "lockeduser simple bind gets unwillingToPerform (53)" \
    rc_is 53 ldapwhoami -x -o nettimeout=5 -H "$DS_URI" -D "uid=lockeduser,$P" -w lockeduser-dirpw

# TLS, when the instance has it
if [[ -n ${DS_CA:-} ]]; then
    check "LDAPS ($DS_LDAPS_URI) with DS_CA" \
        env LDAPTLS_CACERT="$DS_CA" "${T[@]}" ldapwhoami -x -o nettimeout=5 -H "$DS_LDAPS_URI" -D "$ALICE" -w alice-dirpw
    check "StartTLS ($DS_URI -ZZ) with DS_CA" \
        env LDAPTLS_CACERT="$DS_CA" "${T[@]}" ldapwhoami -x -ZZ -o nettimeout=5 -H "$DS_URI" -D "$ALICE" -w alice-dirpw
    check "LDAPS without the CA is refused" \
        rc_is 255 env LDAPTLS_CACERT=/dev/null ldapwhoami -x -o nettimeout=5 -H "$DS_LDAPS_URI"
fi

echo "selfcheck: $passed passed, $failed failed"
(( failed == 0 ))
