"""templates/gcp/startup.sh as a node runs it at each boot, with its paths moved under a temporary
root and the node's tools as stand-ins: curl answers instance metadata from files (the metadata
server's /computeMetadata/v1/instance/attributes/KEY; curl -f exits 22 on a 404), and systemctl,
python3 (launch.py prepare), useradd, id and chgrp record what they were asked. What is tested is
the script's own logic: files replaced whole or not at all, and the server started only after
this boot's preparation succeeded (systemd itself does not run here; the unit's
ConditionPathExists is checked as text).
"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import TEMPLATES

ATTRIBUTES = {
    "mlinfra-launcher": "# launch.py v2\n",
    "mlinfra-node": '{"stack": "s"}\n',
    "mlinfra-workload": "# workload.py v2\n",
    "mlinfra-workload-gcp": "# workload_gcp.py v2\n",
    "mlinfra-guest-report": "# guest_report.py\n",
}

# Each stand-in appends "NAME ARGS" to calls.log; curl serves $ATTRS/KEY, or KEY.partial's text then
# fails (a connection lost mid-body: curl exits 18, "partial file").
STANDINS = {
    "curl": 'key="${@: -1}"; key="${key##*/}"\n'
            'if [ -f "$ATTRS/$key.partial" ]; then cat "$ATTRS/$key.partial"; exit 18; fi\n'
            '[ -f "$ATTRS/$key" ] || exit 22\ncat "$ATTRS/$key"\n',
    "python3": 'echo "python3 $* marker=$([ -e "$ROOT/run/mlinfra/prepared" ] && echo yes || echo no)" >>"$CALLS"\n'
               '[ ! -e "$ROOT/prepare-fails" ]\n',
    "systemctl": 'echo "systemctl $*" >>"$CALLS"\n',
    "id": "echo 999\n",
    "useradd": 'echo "useradd $*" >>"$CALLS"\n',
    "chgrp": 'echo "chgrp $*" >>"$CALLS"\n',
}


@pytest.fixture
def node(tmp_path):
    root = tmp_path / "root"
    attrs = tmp_path / "attrs"
    bin_dir = tmp_path / "bin"
    for folder in (root, attrs, bin_dir, root / "etc" / "systemd" / "system"):
        folder.mkdir(parents=True)
    for key, value in ATTRIBUTES.items():
        (attrs / key).write_text(value)
    for name, body in STANDINS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    # Every path the script writes, moved under root: /opt, /etc, /run, /var.
    text = re.sub(r"(?<![\w.])/(opt|etc|run|var)(?=/)", lambda m: f"{root}/{m[1]}",
                  (TEMPLATES / "gcp" / "startup.sh").read_text())
    script = tmp_path / "startup.sh"
    script.write_text(text)
    for line in text.splitlines():  # nothing may reach this machine's own /opt, /etc or /run
        assert not re.search(r"(?<![\w.])/(opt|etc|run)/", line), line
    return root, attrs, bin_dir, script


def boot(tmp_path, node):
    root, attrs, bin_dir, script = node
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ATTRS": str(attrs), "ROOT": str(root), "CALLS": str(tmp_path / "calls.log")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls.log").read_text().splitlines() if (tmp_path / "calls.log").exists() else []
    return done, calls


def test_a_boot_prepares_then_starts_the_server_that_needs_this_boots_marker(tmp_path, node):
    root = node[0]
    (root / "run" / "mlinfra").mkdir(parents=True)
    (root / "run" / "mlinfra" / "prepared").write_text("")  # a rerun: the last run's marker is not this one's
    done, calls = boot(tmp_path, node)
    assert done.returncode == 0, done.stderr
    prepare = next(i for i, call in enumerate(calls) if call.startswith("python3 "))
    assert calls[prepare] == f"python3 {root}/opt/mlinfra/launch.py prepare {root}/etc/mlinfra/node.json marker=no"
    assert calls.index("systemctl stop mlinfra-serve.service") < prepare
    assert calls[-3:] == ["systemctl daemon-reload", "systemctl enable mlinfra-serve.service mlinfra-report.service",
                          "systemctl restart mlinfra-serve.service mlinfra-report.service"]
    assert (root / "run" / "mlinfra" / "prepared").exists()
    unit = (root / "etc" / "systemd" / "system" / "mlinfra-serve.service").read_text()
    assert f"ConditionPathExists={root}/run/mlinfra/prepared" in unit.splitlines()
    assert (root / "opt" / "mlinfra" / "workload.py").read_text() == ATTRIBUTES["mlinfra-workload"]
    assert stat.S_IMODE((root / "etc" / "mlinfra" / "node.json").stat().st_mode) == 0o640
    assert (root / "opt" / "mlinfra" / "serve.py").read_text() == ""  # not shipped: empty, as launch.py expects
    assert not list(root.rglob("*.new"))


def test_a_failed_prepare_leaves_the_server_stopped_and_unmarked(tmp_path, node):
    root = node[0]
    (root / "prepare-fails").write_text("")
    done, calls = boot(tmp_path, node)
    assert done.returncode != 0
    assert not (root / "run" / "mlinfra" / "prepared").exists()
    assert calls[-1].startswith("python3 ") and "systemctl stop mlinfra-serve.service" in calls
    assert not [call for call in calls if re.match(r"systemctl (start|restart|enable)", call)]


def test_metadata_lost_midway_keeps_the_previous_file_whole(tmp_path, node):
    """The unit may import workload.py at any moment: a failed read must not leave half of it."""
    root, attrs = node[0], node[1]
    (root / "opt" / "mlinfra").mkdir(parents=True)
    (root / "opt" / "mlinfra" / "workload.py").write_text("# workload.py v1\n")
    (attrs / "mlinfra-workload").unlink()
    (attrs / "mlinfra-workload.partial").write_text("# workload.py v2, cut sh")
    done, calls = boot(tmp_path, node)
    assert done.returncode != 0 and "cannot read instance metadata mlinfra-workload" in done.stderr
    assert (root / "opt" / "mlinfra" / "workload.py").read_text() == "# workload.py v1\n"
    assert not (root / "opt" / "mlinfra" / "workload.py.new").exists()
    assert not [call for call in calls if call.startswith("python3 ")]
    assert Path(root / "opt" / "mlinfra" / "launch.py").read_text() == ATTRIBUTES["mlinfra-launcher"]


def test_a_failed_read_of_the_node_checks_keeps_the_previous_reporter_whole(tmp_path, node):
    """guest_report.py and its unit go in as the other files do: whole (written beside, then renamed),
    or, when the metadata read fails, not at all, so the running reporter's file stays the last good one."""
    root, attrs = node[0], node[1]
    (root / "opt" / "mlinfra").mkdir(parents=True)
    (root / "opt" / "mlinfra" / "guest_report.py").write_text("# guest_report.py v1\n")
    (attrs / "mlinfra-guest-report").unlink()
    (attrs / "mlinfra-guest-report.partial").write_text("# guest_report.py v2, cut sh")
    done, calls = boot(tmp_path, node)
    assert done.returncode != 0 and "cannot read instance metadata mlinfra-guest-report" in done.stderr
    assert (root / "opt" / "mlinfra" / "guest_report.py").read_text() == "# guest_report.py v1\n"
    assert not list(root.rglob("*.new"))
    assert not [call for call in calls if re.match(r"systemctl (start|restart|enable)", call)]


def test_the_node_checks_files_are_renamed_into_place(tmp_path, node):
    """A unit file or reporter is never seen half-written: each is written as NAME.new, then moved."""
    root, script = node[0], node[3]
    done, _ = boot(tmp_path, node)
    assert done.returncode == 0, done.stderr
    reporter = root / "opt" / "mlinfra" / "guest_report.py"
    assert reporter.read_text() == ATTRIBUTES["mlinfra-guest-report"]
    assert stat.S_IMODE(reporter.stat().st_mode) == 0o644
    unit = (root / "etc" / "systemd" / "system" / "mlinfra-report.service").read_text()
    assert f"ExecStart=/usr/bin/python3 {root}/opt/mlinfra/guest_report.py watch {root}/etc/mlinfra/node.json" in unit
    text = script.read_text()
    for path in (reporter, root / "etc" / "systemd" / "system" / "mlinfra-report.service"):
        # the only redirections to the final paths are none: every write goes to PATH.new
        assert not re.search(rf">\s*{re.escape(str(path))}(?![.\w])", text), path
    assert not list(root.rglob("*.new"))
