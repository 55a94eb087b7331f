#!/bin/bash
@@{directives}
#
# A PBS (PBS Pro, OpenPBS, Torque) job script rendered by ddmq-template. It
# runs the command on its last line and publishes a completion event to a ddmq
# queue when the command ends, and also when the job is deleted (state
# CANCELLED) or reaches its walltime (TIMEOUT). Wait for the event with
#   ddmq-wait QUEUE --root ROOT --field job_id=JOB_ID   (arrays: array_job_id=)
# It must run under bash (hence -S): dash does not run EXIT traps on SIGTERM.

# PBS sends KILL kill_delay seconds after TERM (10 by default in PBS Pro; see
# `qstat -Qf`): the query, the grace and the publish that follow a TERM end
# within ddmq_term_budget seconds.
ddmq_notify_timeout=15  # publishing after the command ended by itself
ddmq_term_budget=7      # from TERM to the end of the publish
ddmq_grace=1            # how long the command may take to exit after TERM

# CANCELLED or TIMEOUT? PBS says why in no attribute it keeps, but it has the
# limit (Resource_List.walltime; if qstat does not answer, the limit this
# script was rendered with). MoM checks it periodically, so the TERM of a job
# that reached it comes at or after the limit: a script that has run that
# long, less ddmq_slack seconds, was ended by the limit.
ddmq_term_state() {
    local limit
    limit=$(ddmq_bounded 2 qstat -f "$PBS_JOBID" 2>/dev/null |
        awk -F' = ' '$1 ~ /Resource_List\.walltime$/ { print $2; exit }')
    limit=$(ddmq_seconds "$limit") || limit=$ddmq_time_limit
    ddmq_by_elapsed "$limit"
}

@@{common}
# PBS starts a job in the home directory, SLURM where it was submitted.
if [ -n "${PBS_O_WORKDIR:-}" ]; then cd "$PBS_O_WORKDIR" || exit 1; fi
ddmq_run @@{command}
