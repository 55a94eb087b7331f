#!/bin/bash
@@{directives}
#
# A SLURM job script rendered by ddmq-template. It runs the command on its last
# line and publishes a completion event to a ddmq queue when the command ends,
# and also when the job is cancelled (state CANCELLED) or reaches its time
# limit (TIMEOUT). Wait for the event with
#   ddmq-wait QUEUE --root ROOT --field job_id=JOB_ID   (arrays: array_job_id=)
# It must run under bash: dash does not run EXIT traps on SIGTERM.
# The --comment names the queue and root: a job killed too hard to run its
# trap (SIGKILL, out of memory, node failure, cancelled while pending) gets its
# event from `ddmq-reconcile QUEUE --root ROOT`, which finds the job by it.

# SLURM sends KILL KillWait seconds (30 by default) after TERM: the query, the
# grace and the publish that follow a TERM end within ddmq_term_budget seconds.
ddmq_notify_timeout=15  # publishing after the command ended by itself
ddmq_term_budget=25     # from TERM to the end of the publish
ddmq_grace=5            # how long the command may take to exit after TERM

# CANCELLED, TIMEOUT or NODE_FAIL? The controller knows: a job it kills because
# its node went down has Reason=NodeDown; a job it ends at its time limit
# has Reason=TimeLimit and no time left (squeue prints INVALID once the limit
# has passed; it checks limits about every 30 s, so TERM comes 0-30 s after
# it), while scancel leaves time on the clock. squeue gets 8 s (a busy
# slurmctld can take seconds; MessageTimeout is 10 s by default); if it does
# not answer, the time this script has run is compared with the limit it was
# rendered with. A job killed with its node is already NODE_FAIL, which squeue
# shows only with --states=all: asked again if the first answer is empty.
ddmq_term_state() {
    local out reason left states
    for states in '' --states=all; do  # the second only after an empty answer
        out=$(ddmq_bounded 8 squeue -h -j "$SLURM_JOB_ID" $states -o '%r|%L' 2>/dev/null) && [ -z "$out" ] || break
    done
    reason=${out%%|*}
    left=${out#*|}
    if [ "$reason" = NodeDown ]; then
        echo NODE_FAIL  # the node was set down (or failed) and the job is killed with it
    elif [ "$reason" = TimeLimit ] || [ "$left" = INVALID ]; then
        echo TIMEOUT
    elif left=$(ddmq_seconds "$left"); then
        if [ "$left" -le 0 ]; then echo TIMEOUT; else echo CANCELLED; fi
    elif [ -n "$out" ]; then
        echo CANCELLED  # UNLIMITED: there is no limit to reach
    else
        ddmq_by_elapsed "$ddmq_time_limit"
    fi
}

@@{common}
ddmq_run @@{command}
