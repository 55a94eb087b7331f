#!/bin/bash
# Step 1 of the example pipeline. It stands for real work (an alignment, a
# simulation...) and leaves its result in the current directory.
set -euo pipefail
sleep "${STEP1_SECONDS:-2}"
echo "aligned by job $SLURM_JOB_ID on $(hostname)" > step1.result
