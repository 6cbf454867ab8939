#!/usr/bin/env bash
# Shared by submit_train.sh and submit_sweep.sh: _submit.sh REPO COMMAND [ARGS...]
set -euo pipefail
repo="$1"; command="$2"; shift 2
address="${RAY_JOB_ADDRESS:-http://127.0.0.1:8265}"
python_bin="${SOFT_DIST_PYTHON:-python}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
ray_cli="${RAY_CLI:-ray}"
runtime_env=$(cat <<JSON
{"working_dir": "$repo",
 "excludes": [".venv", "runs", "data_shards", ".git", "**/__pycache__", "*.egg-info"],
 "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONUNBUFFERED": "1"}}
JSON
)
# Arguments are passed through as they are: quote paths with spaces yourself.
exec "$ray_cli" job submit --address "$address" --runtime-env-json "$runtime_env" -- \
    "$python_bin" -m soft_dist "$command" "$@"
