"""A local node's process as the launcher left it: alive, or dead and why.

The launcher (``templates/local/node.py``) writes ``<run_dir>/<key>.json`` with
the server's pid, and its supervisor writes ``<run_dir>/<key>.exit.json`` with
the exit status once the server ends. A health wait against a dead node would
otherwise poll a closed port until its deadline (600 s by default); with
:func:`exit_reason` it can stop at once and say how the process ended.

Every node process also carries the stack's run dir in its environment, so the stack's
processes can be found (and stopped) when Terraform's state or the records lost track of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import time
from pathlib import Path

_TAIL_BYTES = 16384  # enough for a few lines of a traceback; a log can be gigabytes
_LINE_CHARS = 200  # per line of the tail quoted in a reason, which is one line


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_record(run_dir: Path, key: str) -> dict:
    """The node's process record; {} when missing or corrupt."""
    return _read_json(run_dir / f"{key}.json")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it just has not been reaped yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def log_tail(path: str | Path, lines: int = 5) -> str:
    """The last ``lines`` non-blank lines of a log ("" when it cannot be read)."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _TAIL_BYTES))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "exited (status unknown)"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"was killed by signal {-code}"
    return f"was killed by signal {-code} ({name})"


def exit_reason(run_dir: Path, key: str) -> str | None:
    """None while the node's process runs (or there is no record); else one line saying how it ended."""
    record = read_record(run_dir, key)
    pid = record.get("pid")
    if not pid:
        return None
    exit_path = run_dir / f"{key}.exit.json"
    ended = _read_json(exit_path)
    if not ended:
        if pid_alive(pid):
            return None
        # Dead but no exit file yet: the supervisor may be reaping it this very moment.
        deadline = time.monotonic() + 0.2
        while not ended and pid_alive(record.get("supervisor")) and time.monotonic() < deadline:
            time.sleep(0.005)
            ended = _read_json(exit_path)
    reason = f"process {pid} {_how_it_ended(ended.get('code'))}"
    tail = log_tail(record.get("log") or run_dir / f"{key}.log")
    if tail:
        reason += "; last log lines: " + " | ".join(line[:_LINE_CHARS] for line in tail.splitlines())
    return reason


# -- the stack's processes, found without Terraform's state ----------------------------------------

HOME_VAR = "MLINFRA_NODE_HOME"  # the launcher puts the stack's nodes/ dir in every node process
TOKEN_VAR = "MLINFRA_NODE_TOKEN"


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def stack_processes(run_dir: Path) -> dict[int, str]:
    """Every live process of this stack's nodes → its node token: found by the stack's identity
    (its run dir, an absolute path, carried in the environment of everything a node started),
    never by a name, and whatever Terraform's state or the records say."""
    marker = f"{HOME_VAR}={Path(run_dir).resolve()}".encode()
    found = {}
    for entry in os.listdir("/proc") if Path("/proc/self/environ").exists() else ():
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        environ = _environ(int(entry))
        if marker in environ and pid_alive(int(entry)):
            token = next((v[len(TOKEN_VAR) + 1 :] for v in environ if v.startswith(f"{TOKEN_VAR}=".encode())), b"")
            found[int(entry)] = token.decode()
    return found


def orphans(run_dir: Path) -> list[int]:
    """The stack's processes that no node record accounts for (an interrupted apply or destroy,
    a deleted work dir): nothing else would ever stop them."""
    run_dir = Path(run_dir)
    known = {
        read_record(run_dir, path.stem).get("token")
        for path in run_dir.glob("*.json")
        if not path.name.endswith(".exit.json")
    }
    return sorted(pid for pid, token in stack_processes(run_dir).items() if token not in known)


def stop_processes(pids: list[int], grace_s: float = 10.0) -> int:
    """SIGTERM, a grace period, then SIGKILL for what is left; returns how many there were."""
    count = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 2.0)
        while True:
            pids = [pid for pid in pids if pid_alive(pid)]
            if not pids or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if not pids:
            break
    return count


# -- who holds a node's port -------------------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (IPv4 and IPv6), asked of the kernel by sock_diag, which
    lists listening sockets only; else read from /proc/net/tcp*, which lists every socket: ~12 ms
    a read once a verify's load has left a thousand in TIME_WAIT, for every node at every probe."""
    try:
        return _sock_diag_listening(port)
    except (OSError, AttributeError, ValueError, struct.error):  # no netlink (macOS), or refused
        pass
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])  # state 0A = LISTEN; field 9 = inode
    return found


# sock_diag(7): a dump request for TCP sockets in state LISTEN, per address family.
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP = 4, 20, 0x301
_NLMSG_ERROR, _NLMSG_DONE, _TCP_LISTEN = 2, 3, 10


def _sock_diag_listening(port: int) -> set[str]:
    import socket

    found = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as link:
        link.settimeout(2.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            # struct inet_diag_req_v2, then inet_diag_sockid (ports, addresses, interface: zeros; no cookie)
            request = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 1 << _TCP_LISTEN) + bytes(40)
            request += struct.pack("=II", 0xFFFFFFFF, 0xFFFFFFFF)
            link.send(
                struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, seq, 0) + request
            )
            done = False
            while not done:
                data, offset = link.recv(65536), 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind == _NLMSG_DONE:
                        done = True
                        break
                    if kind == _NLMSG_ERROR:
                        raise OSError(-struct.unpack_from("=i", data, offset + 16)[0], "sock_diag refused")
                    # struct inet_diag_msg: the source port at 4 (big-endian), the inode at 68
                    if struct.unpack_from(">H", data, offset + 20)[0] == port:
                        found.add(str(struct.unpack_from("=I", data, offset + 84)[0]))
                    offset += (length + 3) & ~3
                if not data:
                    break
    return found


def _holders(inodes: set[str], pids) -> list[int]:
    """Which of ``pids`` have one of the sockets open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for pid in pids:
        try:
            links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
            if any(link in wanted for link in links):
                found.append(pid)
        except OSError:
            continue
    return found


def identity_problem(run_dir: Path, key: str) -> str | None:
    """Why the node is not what answers on its port: its process ended (``exit_reason``), or the
    port is held by a process outside the node's process tree. None when the node is itself, or
    nothing listens yet (still starting). Linux only; elsewhere only the exit is known."""
    reason = exit_reason(run_dir, key)
    if reason is not None:
        return reason
    record = read_record(run_dir, key)
    port, token = record.get("port"), record.get("token")
    inodes = _listening_inodes(int(port)) if port and Path("/proc/net/tcp").exists() else set()
    if not inodes:
        return None
    # Most servers hold their own socket: the recorded pid, still carrying the node's token (not a
    # reused pid), settles it without reading every process's environment.
    pid = record.get("pid")
    if pid and _holders(inodes, [pid]) and f"{TOKEN_VAR}={token}".encode() in _environ(pid):
        return None
    ours = [pid for pid, node_token in stack_processes(run_dir).items() if node_token == token]
    if _holders(inodes, ours):
        return None
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in ours]
    squatters = _holders(inodes, others)
    who = f"pid {', '.join(map(str, squatters))}" if squatters else "a process this user cannot see"
    return f"port {port} is held by {who}, not by the node's processes"
