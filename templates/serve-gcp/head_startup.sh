#!/bin/bash
# The head VM: Ray (pinned) in a venv, the Ray head with the MIG-backed autoscaler, then the
# Serve app. Values come from instance metadata (written by Terraform from tfvars), never from
# text pasted into this script. Compute Engine runs it as root on every boot: every file it
# writes goes in whole (written beside its place, then renamed), so a reader, or a reboot
# mid-write, never finds half of one.
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions

# metadata and fetch_file: the same text as in templates/gcp/startup.sh (a test keeps them equal).
metadata() {
  curl -fsS --retry 5 -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

# fetch_file KEY DEST MODE [optional]: the metadata value as a whole file or not at all (written
# beside it, then renamed), so a unit importing DEST never reads a half-written one. An optional
# value that is absent becomes an empty file ("not shipped"); any other failure keeps the old file.
fetch_file() {
  STAGE="reading instance metadata $1 into $2"
  if ! metadata "$1" >"$2.new"; then
    if [ "${4:-}" != optional ]; then
      rm -f "$2.new"
      echo "mlinfra: cannot read instance metadata $1" >&2
      return 1
    fi
    : >"$2.new"
  fi
  chmod "$3" "$2.new"
  mv -f "$2.new" "$2"
}

# The head publishes no reason of its own (no guest_report.py here): the serial console has this line.
STAGE="starting"
trap 'echo "mlinfra: head startup failed while ${STAGE} (exit status $?)" >&2' ERR

STAGE="creating /opt/mlinfra"
install -d -m 0755 /opt/mlinfra
fetch_file mlinfra-head /opt/mlinfra/head.json 0644
fetch_file mlinfra-serve-app /opt/mlinfra/mlinfra_serve_app.py 0644
fetch_file mlinfra-mig-provider /opt/mlinfra/mig_provider.py 0644

# Ray in a venv, marked installed only once pip finished: a boot that finds no marker (a first
# boot, a reboot during the install, another pin) builds the venv again from nothing.
RAY='ray[serve]==2.60.0'
venv=/opt/mlinfra/venv
py=$venv/bin/python
if [ "$(cat "$venv/.mlinfra-installed" 2>/dev/null)" != "$RAY" ]; then
  # Debian and Ubuntu split ensurepip (what `python3 -m venv` needs) into python3-venv, which
  # Ubuntu's cloud images do not install ("ensurepip is not available ... apt install python3.12-venv").
  STAGE="installing python3-venv"
  python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }
  STAGE="installing $RAY into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$RAY"
  echo "$RAY" >"$venv/.mlinfra-installed.new"
  mv -f "$venv/.mlinfra-installed.new" "$venv/.mlinfra-installed"
fi

# The provider reports the head by its VPC address, known only once the VM exists.
STAGE="reading the head's VPC address"
head_ip="$(curl -fsS --retry 5 -H "Metadata-Flavor: Google" \
  "http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/ip")"
STAGE="writing the autoscaler's config and the policy files"
MLINFRA_HEAD_IP="$head_ip" $py - <<'PY'
import json
import os
import pathlib


def write_whole(path, text):
    """``text`` as ``path``, written beside it and renamed (as fetch_file does)."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


head = json.load(open("/opt/mlinfra/head.json"))
head["autoscaler"]["provider"]["head_ip"] = os.environ["MLINFRA_HEAD_IP"].strip()
write_whole(pathlib.Path("/opt/mlinfra/autoscaler.json"), json.dumps(head["autoscaler"]))
# A custom autoscaling policy: its module, shipped from the stack's directory (relative paths).
root = pathlib.Path("/opt/mlinfra/policy")
for relative, text in head.get("policy_files", {}).items():
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise SystemExit(f"refusing policy file outside {root}: {relative}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_whole(target, text)
PY
# Every Ray worker of the head (Serve's controller runs the policy) inherits this from `ray start`.
export PYTHONPATH=/opt/mlinfra:/opt/mlinfra/policy RAY_USAGE_STATS_ENABLED=0
export RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5 RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S=0.5
export RAY_metrics_report_interval_ms=2000
# `mlinfra status` runs this over SSH (sudo: the cluster is root's): replicas, queue depth, nodes.
STAGE="writing /opt/mlinfra/status"
cat >/opt/mlinfra/status.new <<'SH'
#!/bin/sh
export PYTHONPATH=/opt/mlinfra:/opt/mlinfra/policy RAY_USAGE_STATS_ENABLED=0
MLINFRA_HEAD="$(cat /opt/mlinfra/head.json)" exec /opt/mlinfra/venv/bin/python -c 'import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())' status
SH
chmod 755 /opt/mlinfra/status.new
mv -f /opt/mlinfra/status.new /opt/mlinfra/status
# num-cpus=0: replicas need a GPU worker; the head only routes and decides.
STAGE="starting the Ray head"
$venv/bin/ray start --head --port=6379 --num-cpus=0 --include-dashboard=false --disable-usage-stats \
  --metrics-export-port="$($py -c 'import json; print(json.load(open("/opt/mlinfra/head.json"))["metrics_port"])')" \
  --autoscaling-config=/opt/mlinfra/autoscaler.json
STAGE="deploying the Serve app"
MLINFRA_HEAD="$(cat /opt/mlinfra/head.json)" $py -c 'import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())' deploy
