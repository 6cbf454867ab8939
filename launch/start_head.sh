#!/usr/bin/env bash
# Start a Ray head node whose dashboard and job API listen on loopback only, with token auth.
#
#   launch/start_head.sh            # then, on each worker node: ray start --address HEAD_IP:6379
#
# The job API (dashboard, port 8265) answers on 127.0.0.1 only: reach it from your laptop through an SSH
# tunnel (ssh -L 8265:127.0.0.1:8265 head-node). The GCS (port 6379) still listens on all interfaces,
# because worker nodes must reach it: keep it behind a firewall / security group that admits only the
# cluster's own nodes. Token auth (RAY_AUTH_MODE=token) makes every client present the token in
# RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token); copy the same file to every node and to clients.
# Extra arguments go to `ray start`; on a machine where another Ray instance runs, give the dashboard
# agent a free port (--dashboard-agent-listen-port=PORT), or the job API never gets an agent.
set -euo pipefail
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
token="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
if [ "$RAY_AUTH_MODE" = "token" ] && [ ! -s "$token" ]; then
    mkdir -p "$(dirname "$token")"
    umask 077
    python -c "import secrets; print(secrets.token_hex(32), end='')" > "$token"
    echo "wrote a new auth token to $token (copy it to every node and client)"
fi
exec ray start --head --port="${RAY_GCS_PORT:-6379}" \
    --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
    --disable-usage-stats "$@"
