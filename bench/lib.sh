# Shared by the bench scripts (sourced, not run): stopping what they started, free
# ports, and removing pam_wrapper's copies of their PAM services. The caller defines
# `say` and `die`, sets WORK once its work directory exists, and calls
# `remember_pam_copies` before it starts anything under pam_wrapper.

stop_pid() {  # stop_pid PID [seconds]: SIGTERM, then SIGKILL
    local pid=$1 limit=${2:-5} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        # a zombie child counts as gone
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# A port outside the ephemeral range (the thousands of connections a bench opens must
# not take its listening ports) that no socket uses, TIME_WAIT included.
read -r EPHEMERAL_LOW EPHEMERAL_HIGH < /proc/sys/net/ipv4/ip_local_port_range
USED_PORTS=' '
free_port() {
    local p
    for _ in $(seq 500); do
        if (( EPHEMERAL_LOW > 11024 )); then p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)));
        else p=$((EPHEMERAL_HIGH + 1 + RANDOM % (65535 - EPHEMERAL_HIGH))); fi
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Htan "sport = :$p" 2>/dev/null) ]]; then USED_PORTS+="$p "; echo "$p"; return; fi
    done
    die "no free port"
}

# pam_wrapper copies a process's services to /tmp/pam.X and leaves them when the process
# is killed: those that name our work directory and were not there before are ours.
remember_pam_copies() {
    PAM_DIRS_BEFORE=$(ls -d /tmp/pam.* 2>/dev/null || true)
}
remove_our_pam_copies() {
    local d
    for d in /tmp/pam.*; do
        [[ -d $d ]] || continue
        grep -qxF -- "$d" <<<"$PAM_DIRS_BEFORE" && continue
        [[ -n $WORK ]] && grep -rqsF -- "$WORK/" "$d" && rm -rf -- "$d"
    done
}
