#!/usr/bin/env bash
# Dependency audit: every crate in Cargo.lock against the RustSec advisory database,
# with cargo-audit (installed from crates.io when missing). Vulnerabilities, and
# warnings (unmaintained, unsound, yanked crates), fail the audit.
#
# The advisory database is a git repository on GitHub
# (https://github.com/rustsec/advisory-db); crates.io does not carry it. On a machine
# that cannot reach GitHub (name resolution or connection fails) the audit cannot run:
# it is then skipped with a message saying so, and only then. Anything else that goes
# wrong fails.
#
#   scripts/audit.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly SELF=audit.sh
readonly DB_HOST=github.com
readonly DB_URL=https://github.com/rustsec/advisory-db

if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

if ! getent ahosts "$DB_HOST" >/dev/null 2>&1; then
    echo "$SELF: SKIPPED: the dependency audit needs the RustSec advisory database ($DB_URL), and $DB_HOST does not resolve on this machine (no route to GitHub). Nothing was audited."
    exit 0
fi
if ! timeout 20 bash -c "exec 3<>/dev/tcp/$DB_HOST/443" 2>/dev/null; then
    echo "$SELF: SKIPPED: the dependency audit needs the RustSec advisory database ($DB_URL), and $DB_HOST:443 cannot be reached from this machine. Nothing was audited."
    exit 0
fi

if ! cargo audit --version >/dev/null 2>&1; then
    echo "$SELF: installing cargo-audit from crates.io (cargo install --locked cargo-audit)"
    cargo install --locked cargo-audit
fi
cargo audit --deny warnings
