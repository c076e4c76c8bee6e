#!/bin/sh
# A PAM module whose child dies (pam.d/test/segv): the pam_exec child kills itself with
# SIGSEGV, as a crashing helper would.
PATH=/usr/bin:/bin
export PATH
kill -SEGV $$
