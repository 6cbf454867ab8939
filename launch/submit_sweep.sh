#!/usr/bin/env bash
# Submit `soft-dist tune` (a Ray Tune + Optuna sweep) to a Ray cluster as a job.
#
#   launch/submit_sweep.sh --config configs/sweeps/default.yaml --run-dir /shared/sweeps/rafdb data.shards=/shared/shards/rafdb
#
# Same environment as submit_train.sh (RAY_JOB_ADDRESS, RAY_AUTH_MODE + token, SOFT_DIST_PYTHON).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
exec "$(dirname "$0")/_submit.sh" "$here" tune "$@"
