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
# Debian and Ubuntu split ensurepip (what `python3 -m venv` needs) into python3-venv, which
# Ubuntu's cloud images do not install ("ensurepip is not available ... apt install python3.12-venv").
python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }
[ -x /opt/mlinfra/venv/bin/python ] || { python3 -m venv /opt/mlinfra/venv && /opt/mlinfra/venv/bin/pip install -q 'ray[serve]==2.60.0'; }
py=/opt/mlinfra/venv/bin/python
$py - <<'PY'
import json
import urllib.request
head = json.load(open("/opt/mlinfra/head.json"))
# The provider reports the head by its VPC address, known only once the VM exists.
ip = urllib.request.Request("http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/ip",
                            headers={"Metadata-Flavor": "Google"})
head["autoscaler"]["provider"]["head_ip"] = urllib.request.urlopen(ip, timeout=10).read().decode().strip()
json.dump(head["autoscaler"], open("/opt/mlinfra/autoscaler.json", "w"))
# A custom autoscaling policy: its module, shipped from the stack's directory (relative paths).
import pathlib
root = pathlib.Path("/opt/mlinfra/policy")
for relative, text in head.get("policy_files", {}).items():
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise SystemExit(f"refusing policy file outside {root}: {relative}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
PY
# Every Ray worker of the head (Serve's controller runs the policy) inherits this from `ray start`.
export PYTHONPATH=/opt/mlinfra:/opt/mlinfra/policy RAY_USAGE_STATS_ENABLED=0
export RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5 RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5
export RAY_metrics_report_interval_ms=2000
# `mlinfra status` runs this over SSH (sudo: the cluster is root's): replicas, queue depth, nodes.
cat > /opt/mlinfra/status <<'SH'
#!/bin/sh
export PYTHONPATH=/opt/mlinfra:/opt/mlinfra/policy RAY_USAGE_STATS_ENABLED=0
MLINFRA_HEAD="$(cat /opt/mlinfra/head.json)" exec /opt/mlinfra/venv/bin/python -c 'import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())' status
SH
chmod 755 /opt/mlinfra/status
# num-cpus=0: replicas need a GPU worker; the head only routes and decides.
/opt/mlinfra/venv/bin/ray start --head --port=6379 --num-cpus=0 --include-dashboard=false --disable-usage-stats \
  --metrics-export-port="$($py -c 'import json; print(json.load(open("/opt/mlinfra/head.json"))["metrics_port"])')" \
  --autoscaling-config=/opt/mlinfra/autoscaler.json
MLINFRA_HEAD="$(cat /opt/mlinfra/head.json)" $py -c 'import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())' deploy
