#!/bin/bash
# Step 2 of the example pipeline: wait in the job for the completion event of
# step 1, then use its result; fail if step 1 did not complete.
#   usage: step2.sh QUEUE ROOT STEP1_JOB_ID
set -euo pipefail
queue=$1 root=$2 step1=$3
# Claims the event (one waiter gets it) and writes it to step1.event.
ddmq-wait "$queue" --root "$root" --field job_id="$step1" --timeout 3600 --output step1.event
state=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])' < step1.event)
if [ "$state" != COMPLETED ]; then
    echo "step 1 (job $step1) ended $state: not going on" >&2
    exit 1
fi
echo "step 1 (job $step1) completed: $(cat step1.result)"
