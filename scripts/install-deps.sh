#!/usr/bin/env bash
# Install everything ldap-pam-proxy needs to build and test on a Debian 12
# machine, as root. Idempotent: when every package is already installed apt is
# not touched at all, so reruns take well under a second.
#
#   scripts/install-deps.sh          # install / check
#   FORCE_APT=1 scripts/install-deps.sh   # run apt-get even if all present
set -euo pipefail

die() { echo "install-deps: error: $*" >&2; exit 1; }
log() { echo "install-deps: $*" >&2; }

PACKAGES=(
    # 389 Directory Server (dscreate/dsctl/dsconf come from python3-lib389,
    # which 389-ds-base depends on; listed explicitly so a missing recommends
    # never bites) and the OpenLDAP client tools used by tests and the demo.
    389-ds-base python3-lib389 ldap-utils
    # PAM: the library and modules, headers + libclang for pam-sys's bindgen,
    # pam_wrapper for tests, pamtester for manual checks.
    libpam0g libpam-modules libpam0g-dev libclang-dev libpam-wrapper pamtester
    # Build and harness tools.
    gcc libc6-dev pkg-config openssl ca-certificates procps coreutils curl
)

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get and /usr/share/dirsrv are root-owned)"
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script supports Debian 12 only"

missing=()
for p in "${PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $st == "install ok installed" ]] || missing+=("$p")
done

if (( ${#missing[@]} > 0 )) || [[ ${FORCE_APT:-0} == 1 ]]; then
    log "installing: ${missing[*]:-(forced)}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null \
        || die "apt-get install failed (packages: ${PACKAGES[*]})"
else
    log "all ${#PACKAGES[@]} packages already installed"
fi

# dscreate reads with_systemd from defaults.inf and, when it is 1, calls
# systemctl in its online phase even with "systemd = False" in the .inf.
# There is no systemd on the test machines, so turn it off.
DEFAULTS_INF=/usr/share/dirsrv/inf/defaults.inf
[[ -f $DEFAULTS_INF ]] || die "$DEFAULTS_INF missing after install (389-ds-base broken?)"
if grep -Eq '^[[:space:]]*with_systemd[[:space:]]*=[[:space:]]*0[[:space:]]*$' "$DEFAULTS_INF"; then
    :
elif grep -Eq '^[[:space:]]*with_systemd[[:space:]]*=' "$DEFAULTS_INF"; then
    sed -i -E 's/^[[:space:]]*with_systemd[[:space:]]*=.*/with_systemd = 0/' "$DEFAULTS_INF"
    log "patched $DEFAULTS_INF: with_systemd = 0"
else
    die "$DEFAULTS_INF has no with_systemd line; cannot disable systemd use by dscreate"
fi

# The Rust toolchain is not installed from here (machines ship rustup).
if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x $HOME/.cargo/bin/cargo ]]; then
        die "cargo is installed in $HOME/.cargo/bin but not on PATH: run  . \"\$HOME/.cargo/env\"  and retry"
    fi
    cat >&2 <<'EOF'
install-deps: error: cargo not found on PATH.
Install the Rust toolchain with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"
then rerun this script.
EOF
    exit 1
fi

log "ok ($(cargo --version))"
