#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, creates a
# real 389 DS instance on a free loopback port, runs every test against it, removes it.
#   tests/run.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# rustup's cargo, when the calling environment (CI, cron, sudo) did not put it on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
scripts/install-deps.sh
# The sssd end-to-end test needs a real sssd and pamtester (it runs them in a mount
# namespace of their own: unshare and nsenter, util-linux), and tests/deploy.rs needs
# systemd-analyze (Debian's systemd package; without systemd-sysv it does not become
# the init system). Kept out of install-deps.sh because installing sssd adds pam_sss and
# nss "sss" to the system's PAM and NSS configuration, which a demo machine should not
# get as a side effect. The balancer test runs a real HAProxy in front of two proxies.
test_packages=(sssd-ldap sssd-tools libpam-sss libnss-sss pamtester util-linux systemd haproxy)
missing=()
for p in "${test_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if (( ${#missing[@]} > 0 )); then
    echo "installing test packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A free loopback port: nothing answers a connect on it.
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768+)
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

# The flood test opens a few thousand sockets in the test process and as many in the
# proxy it starts (which inherits this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

name="lpptest$$"
state=$(mktemp -d /tmp/lpp-test.XXXXXX)
cleanup() {
    tests/ds/ds.sh remove "$name" >/dev/null 2>&1 || echo "warning: could not remove 389 instance $name" >&2
    rm -rf "$state"
}
trap cleanup EXIT

start=$(date +%s)
tests/ds/ds.sh create "$name" "$(free_port)" "$state" --tls-port "$(free_port)"
export LPP_DS_ENV="$state/ds.env"
echo "389 DS instance $name ready in $(( $(date +%s) - start ))s"

set +e
cargo test --all-targets "$@" 2>&1 | tee "$state/cargo-test.log"
rc=${PIPESTATUS[0]}
set -e
echo "test suite finished in $(( $(date +%s) - start ))s"
# One line for the whole suite, summed over every test binary's "test result" line.
sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$state/cargo-test.log" \
    | awk '{ p += $1; f += $2 } END { printf "suite: %d passed, %d failed\n", p, f }'
exit "$rc"
