#!/bin/sh
# Simulated Duo push for the "duo" test PAM service (pam.d/test/duo).
# Usage: duo-push.sh STATE_DIR
# Records the push before waiting, so tests can count transactions while they
# are still running. The line is "<PAM_USER> <PAM_RHOST>".
# pam_exec passes no PATH.
PATH=/usr/bin:/bin
export PATH
state=${1:?state directory}
printf '%s %s\n' "$PAM_USER" "${PAM_RHOST:-}" >> "$state/duo-pushes"
delay=0
if [ -r "$state/duo-delay" ]; then
    delay=$(cat "$state/duo-delay")
fi
sleep "${delay:-0}"
exit 0
