#!/bin/bash
# A GPU worker: join the region's Ray head and stay in the foreground (systemd keeps it).
set -euo pipefail
md() { curl -sf -H 'Metadata-Flavor: Google' "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }
head_ip="$(md mlinfra-head-address)"
[ -x /opt/mlinfra/venv/bin/python ] || { python3 -m venv /opt/mlinfra/venv && /opt/mlinfra/venv/bin/pip install -q 'ray[serve]==2.60.0'; }
systemd-run --unit=mlinfra-ray-worker --property=Restart=always \
  /opt/mlinfra/venv/bin/ray start --address="${head_ip}:6379" --block --disable-usage-stats
