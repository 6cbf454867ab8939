#!/usr/bin/env bash
# Submit `soft-dist train` to a Ray cluster as a job.
#
#   launch/submit_train.sh --config configs/rafdb.yaml --run-dir /shared/runs/rafdb-soft data.shards=/shared/shards/rafdb
#
# Environment:
#   RAY_JOB_ADDRESS   the cluster's job API (default http://127.0.0.1:8265: a head on this machine, or an
#                     SSH tunnel to one: ssh -L 8265:127.0.0.1:8265 head-node)
#   RAY_AUTH_MODE     'token' (Ray >= 2.60 clusters have token auth on): the token is read from
#   RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN / ~/.ray/auth_token, the same token the cluster was started with.
#   SOFT_DIST_PYTHON  the Python on the cluster that has soft-dist's dependencies (default: python)
#
# The repository is uploaded as the job's working directory (without .venv, runs/, data_shards/, .git),
# so the job runs this checkout's code. --run-dir and data.shards must be paths that every node sees
# (shared storage): checkpoints, metrics and results.json are written there.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
exec "$(dirname "$0")/_submit.sh" "$here" train "$@"
