#!/bin/bash
# mlinfra node bootstrap: Compute Engine runs this as root on every boot (metadata startup-script).
# Static text: every stack value (command, env, port) is read from instance metadata at run time
# and handed to the launcher as a JSON file, never pasted into this script or the unit file.
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions

metadata() {
  curl -fsS --retry 5 -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

# This boot's preparation succeeded: the server's unit starts only when this file exists
# (ConditionPathExists: a unit whose condition fails is skipped, not failed; systemd.unit(5)).
# /run is emptied at every boot, so on a reboot the enabled unit waits for this script's prepare
# instead of starting on a half-prepared node; startup.sh starts it once prepare succeeded.
PREPARED=/run/mlinfra/prepared

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

# write_unit NAME: a systemd unit from stdin, written beside its place and renamed, the same way.
write_unit() {
  cat >"/etc/systemd/system/$1.new"
  mv -f "/etc/systemd/system/$1.new" "/etc/systemd/system/$1"
}

# A failed step is the node's reason, published as launch.py's are (the guest attribute
# mlinfra/workload, through workload_gcp.py's own publish), so the gate says why at once instead
# of waiting out its deadline for a report. launch.py prepare publishes its own, more precise one.
# Only workload.py and workload_gcp.py themselves cannot be reported missing on a first boot:
# they are fetched first, and the serial console has that line.
STAGE="starting"
PUBLISH_FAILURE=yes
report_failure() {
  local status=$?
  trap - ERR
  echo "mlinfra: startup failed while ${STAGE} (exit status ${status})" >&2
  if [ "$PUBLISH_FAILURE" = yes ] && [ -s /opt/mlinfra/workload_gcp.py ] && [ -s /opt/mlinfra/workload.py ]; then
    python3 /opt/mlinfra/workload_gcp.py fail "$STAGE" "exit status ${status}; the startup log (serial console) has more" \
      /etc/mlinfra/node.json || true
  fi
}
trap report_failure ERR

STAGE="creating /opt/mlinfra and /etc/mlinfra"
install -d -m 0755 /opt/mlinfra /etc/mlinfra
# serve.image, serve.setup and [model] (issue 11): launch.py's helpers, beside it. First: the ERR
# trap publishes through them.
fetch_file mlinfra-workload /opt/mlinfra/workload.py 0644
fetch_file mlinfra-workload-gcp /opt/mlinfra/workload_gcp.py 0644
fetch_file mlinfra-launcher /opt/mlinfra/launch.py 0644
fetch_file mlinfra-node /etc/mlinfra/node.json 0640
# The reference server (`mlinfra serve`), shipped only when serve.command uses it.
fetch_file mlinfra-reference-server /opt/mlinfra/serve.py 0644 optional
# Its model, as the package path serve.py imports (mlinfra.demand), beside it.
STAGE="creating /opt/mlinfra/mlinfra"
install -d -m 0755 /opt/mlinfra/mlinfra
: >/opt/mlinfra/mlinfra/__init__.py
fetch_file mlinfra-reference-model /opt/mlinfra/mlinfra/demand.py 0644 optional
# Its OpenAI-compatible endpoints and their language model (mlinfra.completions, mlinfra.textgen).
fetch_file mlinfra-reference-completions /opt/mlinfra/mlinfra/completions.py 0644 optional
fetch_file mlinfra-reference-textgen /opt/mlinfra/mlinfra/textgen.py 0644 optional
fetch_file mlinfra-reference-textgen-data /opt/mlinfra/mlinfra/textgen.json 0644 optional
# The node-side checks: the gate's gpu and health figures, published as a guest attribute.
fetch_file mlinfra-guest-report /opt/mlinfra/guest_report.py 0644

# The model server runs as an unprivileged system user with its own home for caches.
STAGE="creating the service user mlserve"
if ! id -u mlserve >/dev/null 2>&1; then
  useradd --system --create-home --home-dir /var/lib/mlserve --shell /usr/sbin/nologin mlserve
fi
chgrp mlserve /etc/mlinfra/node.json

# -- node-side checks: the reporter runs before prepare, so a node whose prepare fails still reports
STAGE="starting the node-side checks (mlinfra-report.service)"
write_unit mlinfra-report.service <<'UNIT'
[Unit]
Description=mlinfra node-side checks (report in guest attribute mlinfra/report)
After=mlinfra-serve.service

[Service]
User=mlserve
Group=mlserve
ExecStart=/usr/bin/python3 /opt/mlinfra/guest_report.py watch /etc/mlinfra/node.json
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
# -- end node-side checks

# A rerun of this script (without a reboot) prepares again: the server stops only now that every
# file was read (a metadata hiccup before this point leaves it serving), and starts only if this
# preparation succeeds too. The reporter restarts after it, on the new guest_report.py.
STAGE="stopping the server for this preparation"
rm -f "$PREPARED"
systemctl stop mlinfra-serve.service 2>/dev/null || true
systemctl daemon-reload
systemctl enable mlinfra-report.service
systemctl restart mlinfra-report.service

# A failure stops this script here (set -e): no marker, so the server stays stopped, and the
# node's reason is in the guest attribute mlinfra/workload (launch.py publishes it).
STAGE="launch.py prepare"
PUBLISH_FAILURE=no
python3 /opt/mlinfra/launch.py prepare /etc/mlinfra/node.json
PUBLISH_FAILURE=yes
STAGE="starting the server (mlinfra-serve.service)"
install -d -m 0755 /run/mlinfra
: >"$PREPARED"

write_unit mlinfra-serve.service <<'UNIT'
[Unit]
Description=mlinfra model server (serve.command from the stack)
Wants=network-online.target
After=network-online.target
# Written by startup.sh once this boot's `launch.py prepare` succeeded.
ConditionPathExists=/run/mlinfra/prepared

[Service]
User=mlserve
Group=mlserve
WorkingDirectory=/var/lib/mlserve
ExecStart=/usr/bin/python3 /opt/mlinfra/launch.py run /etc/mlinfra/node.json
Restart=on-failure
RestartSec=5
# Output goes to the journal: journalctl -u mlinfra-serve

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable mlinfra-serve.service
# The reporter again: its boot run measures the server just started, not the wait through a long prepare.
systemctl restart mlinfra-serve.service mlinfra-report.service
