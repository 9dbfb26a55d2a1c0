#!/bin/bash
# A GPU worker: join the region's Ray head and stay in the foreground (systemd keeps it).
set -euo pipefail
md() { curl -sf -H 'Metadata-Flavor: Google' "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }
head_ip="$(md mlinfra-head-address)"
# Debian and Ubuntu split ensurepip (what `python3 -m venv` needs) into python3-venv, which
# Ubuntu's cloud images do not install ("ensurepip is not available ... apt install python3.12-venv").
python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }
[ -x /opt/mlinfra/venv/bin/python ] || { python3 -m venv /opt/mlinfra/venv && /opt/mlinfra/venv/bin/pip install -q 'ray[serve]==2.60.0'; }
install -d /opt/mlinfra
md mlinfra-serve-app > /opt/mlinfra/mlinfra_serve_app.py
# The replicas (Ray workers of this node) inherit the environment of `ray start`: the app's module,
# and the metric push intervals Serve's autoscaler reads (as on the head).
systemd-run --unit=mlinfra-ray-worker --property=Restart=always \
  --setenv=PYTHONPATH=/opt/mlinfra --setenv=RAY_USAGE_STATS_ENABLED=0 \
  --setenv=RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5 \
  --setenv=RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5 \
  /opt/mlinfra/venv/bin/ray start --address="${head_ip}:6379" --block --disable-usage-stats
