# ----------------------------------------------------------- ddmq completion event
# When the command ends -- and also when the job is cancelled or reaches its
# time limit -- the EXIT trap publishes a completion event (job and array ids,
# name, cluster, host, submit dir, status, state) to queue $ddmq_queue under root
# $ddmq_root with ddmq-notify. The job's exit status stays the command's; a
# failure to publish is one line on stderr.
ddmq_notify=@@{notify}
ddmq_root=@@{root}
ddmq_queue=@@{queue}
ddmq_time_limit=@@{time_limit}  # seconds, from --time when rendered (empty: none given)
ddmq_slack=10  # a TERM this close to the time limit (or past it) means TIMEOUT
# The path above is where ddmq-notify was when this script was rendered; a
# node that has it elsewhere looks it up in PATH.
[ -x "$ddmq_notify" ] || ddmq_notify=ddmq-notify
ddmq_child=
ddmq_term_at=
ddmq_state=

# Run "$@" for at most $1 seconds (where coreutils timeout exists), deaf to
# TERM: a query or a publish stuck on a dead controller or filesystem must not
# use up the time between the scheduler's TERM and its KILL, and a TERM that
# comes while a finished command's event is being published (its time limit,
# just then) must not stop the publish. The callers ignore TERM already, but
# timeout would pass it on: hence the bash -c.
ddmq_bounded() {
    local limit=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout -s KILL "$limit" "$BASH" -c 'trap "" TERM; exec "$@"' "$1" "$@"
    else
        "$@"
    fi
}

# "[D-]H:M:S", "M:S" or "S" in seconds; fails on anything else (UNLIMITED...).
ddmq_seconds() {
    local t=$1 days=0 total=0 field IFS=:
    case $t in *-*) days=${t%%-*}; t=${t#*-} ;; esac
    case $days in '' | *[!0-9]*) return 1 ;; esac
    case $t in '' | :* | *: | *::* | *[!0-9:]*) return 1 ;; esac
    for field in $t; do total=$((total * 60 + 10#$field)); done
    echo $((10#$days * 86400 + total))
}

# TIMEOUT if this script has run for LIMIT ($1) seconds, less the slack (the
# limit counts from the job's start, a moment before this script's), else
# CANCELLED. Used when the scheduler cannot say itself.
ddmq_by_elapsed() {
    if [ -n "$1" ] && [ "$SECONDS" -ge $(($1 - ddmq_slack)) ]; then
        echo TIMEOUT
    else
        echo CANCELLED
    fi
}

# The scheduler sends TERM to every process of the job on a cancel and at the
# time limit, then KILL a little later. Pass it on to the command (it may have
# been sent to this shell alone), then find out which of the two it was.
ddmq_on_term() {
    trap '' TERM  # once is enough; what starts from now on (ddmq-notify) ignores it too
    ddmq_term_at=$SECONDS
    if [ -n "$ddmq_child" ]; then kill -TERM "$ddmq_child" 2>/dev/null; fi
    ddmq_state=$(ddmq_term_state)
    if [ -z "$ddmq_child" ]; then exit 143; fi
}

# The command ended by TERM, but this shell has had none: the scheduler TERMs
# the processes of a job one by one, and when the command (and the sleep in
# ddmq_run) get theirs first, this shell can reach its EXIT trap before its
# own TERM arrives. Wait up to a second for it, with ddmq_on_term still the
# trap, so that a cancelled job is not reported as a FAILED command.
ddmq_await_own_term() {
    local polls
    for polls in 1 2 3 4 5 6 7 8 9 10; do
        { sleep 0.1 & wait $!; } 2>/dev/null  # a trapped TERM ends `wait` at once
        if [ -n "$ddmq_term_at" ]; then return; fi
    done
}

ddmq_on_exit() {
    local status=$? bound=$((ddmq_notify_timeout + 2)) out rc
    if [ "$status" -eq 143 ] && [ -z "$ddmq_term_at" ]; then ddmq_await_own_term; fi
    trap '' TERM
    if [ -n "$ddmq_term_at" ]; then  # only what is left before the KILL
        bound=$((ddmq_term_budget - (SECONDS - ddmq_term_at)))
        if [ "$bound" -lt 3 ]; then bound=3; fi
    fi
    out=$(ddmq_bounded "$bound" "$ddmq_notify" "$ddmq_queue" --root "$ddmq_root" --status "$status" \
        ${ddmq_state:+--state "$ddmq_state"} --timeout $((bound - 2)) 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        out=${out##*$'\n'}  # its one line, not a traceback
        if [ -z "$out" ]; then out="ddmq-notify: could not publish to '$ddmq_queue' (exit status $rc)"; fi
        echo "$out" >&2
    fi
    exit "$status"
}

# Run the command in the background, so that a TERM is handled within a second
# rather than when the command ends, and exit with its status. Not with
# `wait`: bash (5.2) can lose the status of a child that dies while a trapped
# signal interrupts `wait`, which is just what a scheduler's TERM to the whole
# job does. A `sleep` in the foreground delays the trap by a second at most
# (a tenth during the first second, for short commands). The command keeps
# the job's stdin (sbatch --input, or a pipe into the script): bash would
# give a command started with & /dev/null instead.
ddmq_run() {
    local polls=0
    "$@" <&0 &
    ddmq_child=$!
    while kill -0 "$ddmq_child" 2>/dev/null; do
        if [ -n "$ddmq_term_at" ] && [ $((SECONDS - ddmq_term_at)) -ge "$ddmq_grace" ]; then
            exit 143  # still running after TERM and the grace: report it as ended by TERM
        fi
        polls=$((polls + 1))
        # bash would report a sleep ended by TERM on stderr
        if [ "$polls" -le 10 ]; then { sleep 0.1; } 2>/dev/null; else { sleep 1; } 2>/dev/null; fi
    done
    wait "$ddmq_child"
}

trap ddmq_on_exit EXIT
trap ddmq_on_term TERM
# ------------------------------------------------------------------------------
