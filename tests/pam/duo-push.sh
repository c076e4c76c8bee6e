#!/bin/sh
# Simulated Duo push for the "duo" test PAM service (pam.d/test/duo).
# Usage: duo-push.sh STATE_DIR
# Records the push before waiting, so tests can count transactions while they
# are still running. The line is "<PAM_USER> <PAM_RHOST>".
# Then, while a test holds an exclusive lock on STATE_DIR/duo-hold (see
# PamSetup::hold in tests/common), the push waits for it to let go: the test
# decides when the "phone" answers. Then it waits duo-delay seconds.
# pam_exec passes no PATH.
PATH=/usr/bin:/bin
export PATH
state=${1:?state directory}
printf '%s %s\n' "$PAM_USER" "${PAM_RHOST:-}" >> "$state/duo-pushes"
if [ -e "$state/duo-hold" ]; then
    flock -s "$state/duo-hold" true
fi
delay=0
if [ -r "$state/duo-delay" ]; then
    delay=$(cat "$state/duo-delay")
fi
sleep "${delay:-0}"
exit 0
