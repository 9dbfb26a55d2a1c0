#!/bin/bash
# mlinfra node bootstrap: Compute Engine runs this as root on every boot (metadata startup-script).
# Static text: every stack value (command, env, port) is read from instance metadata at run time
# and handed to the launcher as a JSON file, never pasted into this script or the unit file.
set -euo pipefail

metadata() {
  curl -fsS --retry 5 -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

install -d -m 0755 /opt/mlinfra /etc/mlinfra
metadata mlinfra-launcher >/opt/mlinfra/launch.py.new
mv /opt/mlinfra/launch.py.new /opt/mlinfra/launch.py
metadata mlinfra-node >/etc/mlinfra/node.json.new
chmod 0640 /etc/mlinfra/node.json.new
mv /etc/mlinfra/node.json.new /etc/mlinfra/node.json
# The reference server (`mlinfra serve`), shipped only when serve.command uses it.
metadata mlinfra-reference-server >/opt/mlinfra/serve.py || true
# Its model, as the package path serve.py imports (mlinfra.demand), beside it.
install -d -m 0755 /opt/mlinfra/mlinfra
: >/opt/mlinfra/mlinfra/__init__.py
metadata mlinfra-reference-model >/opt/mlinfra/mlinfra/demand.py || true
# Its OpenAI-compatible endpoints and their language model (mlinfra.completions, mlinfra.textgen).
metadata mlinfra-reference-completions >/opt/mlinfra/mlinfra/completions.py || true
metadata mlinfra-reference-textgen >/opt/mlinfra/mlinfra/textgen.py || true
metadata mlinfra-reference-textgen-data >/opt/mlinfra/mlinfra/textgen.json || true
# serve.image, serve.setup and [model] (issue 11): launch.py's helpers, beside it.
metadata mlinfra-workload >/opt/mlinfra/workload.py
metadata mlinfra-workload-gcp >/opt/mlinfra/workload_gcp.py

# The model server runs as an unprivileged system user with its own home for caches.
if ! id -u mlserve >/dev/null 2>&1; then
  useradd --system --create-home --home-dir /var/lib/mlserve --shell /usr/sbin/nologin mlserve
fi
chgrp mlserve /etc/mlinfra/node.json

python3 /opt/mlinfra/launch.py prepare /etc/mlinfra/node.json

cat >/etc/systemd/system/mlinfra-serve.service <<'UNIT'
[Unit]
Description=mlinfra model server (serve.command from the stack)
Wants=network-online.target
After=network-online.target

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

# -- node-side checks: the gate's gpu and health figures, published as a guest attribute --
metadata mlinfra-guest-report >/opt/mlinfra/guest_report.py
cat >/etc/systemd/system/mlinfra-report.service <<'UNIT'
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

systemctl daemon-reload
systemctl enable mlinfra-serve.service mlinfra-report.service
systemctl restart mlinfra-serve.service mlinfra-report.service
