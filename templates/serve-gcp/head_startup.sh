#!/bin/bash
# The head VM: Ray (pinned) in a venv, the Ray head with the MIG-backed autoscaler, then the
# Serve app. Values come from instance metadata (written by Terraform from tfvars), never from
# text pasted into this script.
set -euo pipefail
md() { curl -sf -H 'Metadata-Flavor: Google' "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }
install -d /opt/mlinfra
md mlinfra-head > /opt/mlinfra/head.json
md mlinfra-serve-app > /opt/mlinfra/mlinfra_serve_app.py
md mlinfra-mig-provider > /opt/mlinfra/mig_provider.py
[ -x /opt/mlinfra/venv/bin/python ] || { python3 -m venv /opt/mlinfra/venv && /opt/mlinfra/venv/bin/pip install -q 'ray[serve]==2.60.0'; }
py=/opt/mlinfra/venv/bin/python
$py - <<'PY'
import json
head = json.load(open("/opt/mlinfra/head.json"))
json.dump(head["autoscaler"], open("/opt/mlinfra/autoscaler.json", "w"))
PY
export PYTHONPATH=/opt/mlinfra RAY_USAGE_STATS_ENABLED=0
export RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5 RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5
# num-cpus=0: replicas need a GPU worker; the head only routes and decides.
/opt/mlinfra/venv/bin/ray start --head --port=6379 --num-cpus=0 --include-dashboard=false --disable-usage-stats \
  --autoscaling-config=/opt/mlinfra/autoscaler.json
MLINFRA_HEAD="$(cat /opt/mlinfra/head.json)" $py -c 'import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())' deploy
