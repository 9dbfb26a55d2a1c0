"""End to end on the local target, with the real engine and real servers."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

from helpers import HTTP_SERVER, port_open, stack_processes, write_stack

from mlinfra import Stack


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_up_noop_down_with_the_reference_server(tmp_path, deployed):
    stack = Stack.load(write_stack(tmp_path, """
        name = "e2e-ref"
        [local]
        regions = ["east", "west"]
    """))
    deployed(stack)
    result = stack.up()
    assert result.passed, result.verify.verdict
    assert result.applied and result.summary.add == 2
    assert [n.key for n in result.nodes] == ["east-0", "west-0"]
    for node in result.nodes:
        status, body = get(node.health_url)
        assert status == 200 and json.loads(body)["status"] == "ok"
        request = urllib.request.Request(node.endpoint + "/predict", data=b'{"instances": [{"hour": 9}]}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert len(json.loads(response.read())["predictions"]) == 1

    again = stack.up()
    assert not again.applied and not again.summary.has_changes
    assert [n.pid for n in again.nodes] == [n.pid for n in result.nodes]  # nothing restarted

    ports = [int(n.endpoint.rsplit(":", 1)[1]) for n in result.nodes]
    down = stack.down()
    assert down.destroyed and down.summary.destroy == 2
    assert not any(port_open(p) for p in ports)
    assert stack_processes("e2e-ref") == []
    assert stack.status().deployed is False


def test_three_regions_two_replicas(tmp_path, deployed):
    stack = Stack.load(write_stack(tmp_path, f"""
        name = "e2e-grid"
        [local]
        regions = ["r1", "r2", "r3"]
        [compute]
        replicas = 2
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """))
    deployed(stack)
    result = stack.up(verify=False)
    keys = [n.key for n in result.nodes]
    assert keys == ["r1-0", "r1-1", "r2-0", "r2-1", "r3-0", "r3-1"]
    ports = [int(n.endpoint.rsplit(":", 1)[1]) for n in result.nodes]
    assert len(set(ports)) == 6
    assert all(get(n.health_url)[0] == 200 for n in result.nodes)
    assert len(stack_processes("e2e-grid")) == 6
    assert stack.up(verify=False).applied is False

    # Re-render keeps every port: the nodes are not replaced by a plan.
    assert stack.plan().summary.has_changes is False
    stack.down()
    assert not any(port_open(p) for p in ports)
    assert stack_processes("e2e-grid") == []


def test_scaling_out_keeps_existing_nodes(tmp_path, deployed):
    text = """
        name = "e2e-scale"
        [local]
        regions = {regions}
        [serve]
        command = "{cmd}"
        health_path = "/"
    """
    path = write_stack(tmp_path, text.format(regions='["a"]', cmd=HTTP_SERVER))
    stack = Stack.load(path)
    deployed(stack)
    first = stack.up(verify=False).nodes
    write_stack(tmp_path, text.format(regions='["a", "b"]', cmd=HTTP_SERVER))
    bigger = Stack.load(path)
    result = bigger.up(verify=False)
    assert result.summary.add == 1 and result.summary.destroy == 0
    assert {n.key: n.pid for n in result.nodes}["a-0"] == first[0].pid


def test_down_after_a_node_crashed_and_with_children(tmp_path, deployed):
    # The command forks a child that would outlive its parent: down must stop it too.
    stack = Stack.load(write_stack(tmp_path, f"""
        name = "e2e-crash"
        [local]
        regions = ["a", "b"]
        [serve]
        command = "sleep 300 & {HTTP_SERVER}"
        health_path = "/"
    """))
    deployed(stack)
    nodes = stack.up(verify=False).nodes
    assert len(stack_processes("e2e-crash")) == 4  # a server and a sleep per node
    os.kill(nodes[0].pid, signal.SIGKILL)  # node a-0's server dies; its sleep child lives on
    deadline = time.monotonic() + 5
    while stack.status().nodes[0].alive and time.monotonic() < deadline:
        time.sleep(0.05)
    status = stack.status()
    assert [(n.key, n.alive, n.ready) for n in status.nodes] == [("a-0", False, False), ("b-0", True, True)]
    stack.down()
    assert stack_processes("e2e-crash") == []


def test_down_spares_a_process_that_reused_the_port(tmp_path, deployed):
    """An unrelated process is never killed, even one listening where a node used to."""
    import subprocess
    import sys

    stack = Stack.load(write_stack(tmp_path, f"""
        name = "e2e-spare"
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """))
    deployed(stack)
    node = stack.up(verify=False).nodes[0]
    os.kill(node.pid, signal.SIGKILL)
    port = int(node.endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + 5
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    bystander = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.down()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_deleted_work_dir_leaves_no_orphan_behind(tmp_path, deployed):
    """The work dir (state, records) deleted while nodes run: `status` reports the processes as
    orphans, `up` stops them before starting a new copy, `down` stops what is left."""
    import shutil

    stack = Stack.load(write_stack(tmp_path, f"""
        name = "e2e-orphan"
        [local]
        regions = ["a", "b"]
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """))
    deployed(stack)
    first = {n.pid for n in stack.up(verify=False).nodes}
    assert set(stack_processes("e2e-orphan")) == first
    shutil.rmtree(tmp_path / ".mlinfra")
    status = stack.status()
    # Each node is two processes: its supervisor and the server.
    assert not status.deployed and first <= set(status.orphans) and len(status.orphans) == 4
    again = stack.up(verify=False)
    assert again.swept == 4 and again.applied
    assert set(stack_processes("e2e-orphan")) == {n.pid for n in again.nodes}  # one copy, the new one
    shutil.rmtree(tmp_path / ".mlinfra")
    gone = stack.down()
    assert (gone.destroyed, gone.swept) == (False, 4) and stack_processes("e2e-orphan") == []
    assert stack.status().orphans == []


def test_resources_without_outputs_are_no_green_and_up_repairs_them(tmp_path, deployed):
    """What a kill -9 just after apply (or Ctrl-C during down) leaves: node resources in state,
    no outputs. Nothing may pass on that; `up` writes the outputs again."""
    stack = Stack.load(write_stack(tmp_path, f"""
        name = "e2e-wedged"
        [local]
        regions = ["a"]
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """))
    deployed(stack)
    stack.up(verify=False)
    state_file = stack.workdir / "terraform.tfstate"
    state = json.loads(state_file.read_text())
    state["outputs"] = {}
    state_file.write_text(json.dumps(state))
    status = stack.status()
    assert status.incomplete and not status.deployed
    assert any("no outputs" in note for note in stack.notes())
    import pytest

    from mlinfra.errors import MlinfraError

    with pytest.raises(MlinfraError) as info:
        stack.verify()
    assert "has resources in state but no outputs" in info.value.message and "mlinfra up" in info.value.hint
    # The reviewed path: no resource changes, and its saved plan writes the outputs back.
    repaired = stack.up(confirm=lambda summary: True, verify=False)
    assert [n.key for n in repaired.nodes] == ["a-0"] and repaired.verify.passed  # the health wait
    assert not stack.status().incomplete and stack.verify(checks=["health"]).passed


def test_a_squatter_on_a_node_port_is_not_the_node(tmp_path, deployed):
    """The node's process runs but never listens; another program serves its port. Health
    answers 200, yet status, verify and `status --check` must not call that node ready."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from mlinfra.cli import app

    path = write_stack(tmp_path, """
        name = "e2e-squat"
        [local]
        regions = ["a"]
        [serve]
        command = "exec sleep 600"
        health_path = "/"
        [verify]
        health_timeout_s = 5
    """)
    stack = Stack.load(path)
    deployed(stack)
    node = stack.up(verify=False, wait_ready=False).nodes[0]
    port = int(node.endpoint.rsplit(":", 1)[1])
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        [seen] = stack.status().nodes
        assert (seen.alive, seen.ready, seen.health_status) == (False, False, 200)
        assert seen.problem == f"port {port} is held by pid {squatter.pid}, not by the node's processes"
        [health] = stack.verify(checks=["health"]).results
        assert not health.passed and health.summary == "not the node"
        assert health.message.endswith(f"but not the node: {seen.problem}")
        shown = CliRunner().invoke(app, ["status", "--check", "-f", str(path)])
        assert shown.exit_code == 1 and "squatter on its port" in shown.stdout
        listed = CliRunner().invoke(app, ["status", "--json", "-f", str(path)])
        assert json.loads(listed.stdout)["nodes"][0]["alive"] is False  # the table and the JSON agree
    finally:
        squatter.kill()
        squatter.wait()


def test_a_node_whose_socket_is_held_by_a_child_is_itself(tmp_path, deployed):
    """A command that does not exec its server (a shell that runs it as a child, a forking master):
    the recorded pid does not hold the port, a process of the node's own tree does. That node is
    alive and ready, not "held by another process"."""
    import sys

    path = write_stack(tmp_path, f"""
        name = "e2e-child-socket"
        [local]
        regions = ["a"]
        [serve]
        command = "{sys.executable} -m http.server $PORT --bind 127.0.0.1; exit 0"
        health_path = "/"
    """)
    stack = Stack.load(path)
    deployed(stack)
    [node] = stack.up(verify=False).nodes  # waits for health
    record = json.loads((stack.workdir / "nodes" / f"{node.key}.json").read_text())
    children = [int(p) for p in open(f"/proc/{record['pid']}/task/{record['pid']}/children").read().split()]
    assert children, "the shell must run the server as its child, or this test tests nothing"
    [seen] = stack.status().nodes
    assert (seen.alive, seen.ready, seen.problem) == (True, True, "")


def test_serve_port_written_in_the_stack_file_is_the_node_port(tmp_path, deployed):
    """serve.port is honoured on the local target: node i listens on serve.port + i; a port some
    other program holds is a clear error, not a silent reassignment."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    path = write_stack(tmp_path, f"""
        name = "e2e-port"
        [local]
        regions = ["a", "b"]
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
        port = {base}
    """)
    stack = Stack.load(path)
    deployed(stack)
    nodes = stack.up(verify=False).nodes
    assert [n.endpoint for n in nodes] == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    assert not stack.up(verify=False).applied  # its own ports are no conflict
    stack.down()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", base + 1))
        squatter.listen()
        import pytest

        from mlinfra.errors import EngineError

        with pytest.raises(EngineError) as info:
            Stack.load(path).up(verify=False)
    assert f"node b-0: port {base + 1} is already in use by another process; with serve.port set" in info.value.message
    default = Stack(name="e2e-port-default", path=tmp_path / "d" / "mlinfra.toml")
    assert "serve.port" not in default.spec.given  # unset: free ports, as before
