#!/bin/bash
# Submit a two-step pipeline as two SLURM jobs. Each job script comes from
# ddmq-template, so each job publishes a completion event when it ends; the
# second job waits inside its script for the first one's event, then works.
# Prints the two job ids.
#   usage: submit.sh [WORK_DIR]    (default: the current directory)
#   QUEUE (default: pipeline-events) and DDMQ_ROOT (default: ~/.ddmq) say
#   where the events go; the root must be on storage every node sees.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(cd "${1:-.}" && pwd)
queue=${QUEUE:-pipeline-events}
root=${DDMQ_ROOT:-$HOME/.ddmq}

submit() {  # submit NAME COMMAND...: render a job script, submit it, print the job id
    local name=$1 id
    shift
    id=$(ddmq-template slurm --queue "$queue" --root "$root" --job-name "$name" --time 00:10:00 \
            --output "$work/$name-%j.out" -- "$@" |
        sbatch --parsable --chdir "$work")
    echo "${id%%;*}"  # "id;cluster" on sites with several clusters
}

# Made before any job runs: the second job's waiter then never starts before
# the queue exists (ddmq-wait would wait for it, and say so in its output).
ddmq --root "$root" create --exist-ok "$queue" >/dev/null

first=$(submit step1 "$here/step1.sh")
second=$(submit step2 "$here/step2.sh" "$queue" "$root" "$first")
echo "$first $second"
