#!/bin/sh
# A slow module that then fails (pam.d/test/slowfail): waits the seconds in
# STATE/slowfail-delay, then exits 1 (pam_exec: PAM_SYSTEM_ERR).
PATH=/usr/bin:/bin
export PATH
state=${1:?state directory}
delay=0
if [ -r "$state/slowfail-delay" ]; then
    delay=$(cat "$state/slowfail-delay")
fi
sleep "${delay:-0}"
exit 1
