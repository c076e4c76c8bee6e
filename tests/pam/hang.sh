#!/bin/sh
# A PAM module that hangs (pam.d/test/hang): records "<PAM_USER>" in STATE/hangs, then
# waits until the test opens and closes STATE/hang.fifo for writing (PamSetup in
# tests/pam_failures.rs releases every waiting transaction at once), and fails.
# pam_exec passes no PATH.
PATH=/usr/bin:/bin
export PATH
state=${1:?state directory}
printf '%s\n' "$PAM_USER" >> "$state/hangs"
cat "$state/hang.fifo" > /dev/null
exit 1
