"""Run a fixed command on a node over SSH, with the stack's own key and known_hosts file.

Uses the system OpenSSH client: it is on every machine that can reach a GCP VM, it speaks
every key and cipher the server does, and its failure texts are well known. Rules:

- argv only, never a local shell string; the remote command is the caller's fixed argv
  joined with ``shlex.quote`` (the remote login shell parses it, so nothing else is in it);
- the stack's own known_hosts (``.mlinfra/<stack>/ssh/known_hosts``): a node's key is
  recorded on first contact (``accept-new``) and a *changed* key is refused, without reading
  or writing the user's ``~/.ssh/known_hosts``;
- ``-F none``: the user's ``~/.ssh/config`` can neither redirect nor break the check;
- ``BatchMode``: never a password or passphrase prompt, which would hang the verify run;
- every failure of ssh itself becomes one line that says what happened and what to do.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from mlinfra.errors import CommandTimedOut, SshError
from mlinfra.verify.runners import RunResult, run_argv

# ssh exits 255 for its own errors; anything else is the remote command's status.
SSH_FAILED = 255


# (label, stderr pattern, message template). Patterns are OpenSSH's own texts; the first match
# wins, so "host key changed" (printed with a banner, then "Host key verification failed.")
# comes before the generic verification failure.
_SSH_FAILURES = (
    (
        "host key changed",
        r"REMOTE HOST IDENTIFICATION HAS CHANGED",
        "the host key of {where} changed since it was first recorded in {known_hosts}: either the node "
        "was rebuilt at the same address or someone is intercepting the connection. If the node was "
        "rebuilt, remove the old key: ssh-keygen -R '{key_host}' -f {known_hosts}",
    ),
    (
        "host key unknown",
        r"Host key verification failed",
        "ssh refused the host key of {where} (not trusted per {known_hosts}); if the node was rebuilt, "
        "remove its old entry: ssh-keygen -R '{key_host}' -f {known_hosts}",
    ),
    (
        "auth failed",
        r"Permission denied \(",
        "{where} refused the stack's SSH key {key}: the node does not have it in its authorized keys "
        "(wrong key, wrong user {user!r}, or the VM metadata has not been applied yet)",
    ),
    (
        "key unusable",
        r"UNPROTECTED PRIVATE KEY FILE|bad permissions",
        "ssh will not use the key {key} because other users can read it: chmod 600 {key}",
    ),
    (
        "key unusable",
        r"(Load key|Identity file) .*(No such file|not accessible|invalid format)",
        "the stack's SSH key {key} is missing or unreadable: only a stack with serve.ssh_cidrs has one (without, "
        "its nodes take no login at all), made by `mlinfra up` where the stack is first deployed; a checkout that "
        "read the key back from remote state has only its public half: copy the private key from the first "
        "work dir to use SSH from here",
    ),
    (
        "connection refused",
        r"Connection refused",
        "{where} refused the connection: sshd is not running there yet (the VM may still be booting) "
        "or the port is wrong",
    ),
    (
        "connect timeout",
        r"Connection timed out|Operation timed out|timed out during banner exchange",
        "no answer from {where} within {connect_timeout:g} s: the VM is down, or a firewall rule does "
        "not allow SSH from this machine (serve.ssh_cidrs)",
    ),
    (
        "unreachable",
        r"No route to host|Network is unreachable",
        "{where} is unreachable from this machine (no route): check the address and the network",
    ),
    (
        "unknown host",
        r"Could not resolve hostname|Name or service not known",
        "the node's host name does not resolve: {where}",
    ),
    (
        "connection closed",
        r"Connection closed by|Connection reset by|kex_exchange_identification",
        "{where} closed the connection before login: sshd is still starting, or it refuses this client",
    ),
)


def classify_ssh_failure(stderr: str) -> tuple[str, str] | None:
    """(label, message template) for a known ssh failure text, else None."""
    for label, pattern, template in _SSH_FAILURES:
        if re.search(pattern, stderr, re.IGNORECASE):
            return label, template
    return None


# A host or user must be a plain token: anything starting with "-" would be read by ssh as an
# option (CVE-2017-1000117 style), and whitespace or control characters have no business there.
_TOKEN = re.compile(r"^[A-Za-z0-9_.:\[\]%@+][A-Za-z0-9_.:\[\]%@+-]*$")


class SshRunner:
    """Runs a command on ``user@host:port`` with ``key_path``, trusting hosts per ``known_hosts_path``."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        key_path: str | Path,
        known_hosts_path: str | Path,
        connect_timeout_s: float = 10,
    ):
        for what, value in (("host", host), ("user", user)):
            if not isinstance(value, str) or not _TOKEN.match(value):
                raise ValueError(f"invalid SSH {what}: {value!r}")
        if not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"invalid SSH port: {port!r}")
        self.host, self.port, self.user = host, port, user
        self.key_path, self.known_hosts_path = Path(key_path), Path(known_hosts_path)
        self.connect_timeout_s = connect_timeout_s

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def argv(self, remote_argv: list[str], connect_timeout_s: float | None = None) -> list[str]:
        """The ssh argv for ``remote_argv``: what ``run`` executes (shown in --debug output and tests)."""
        connect = max(1, round(connect_timeout_s if connect_timeout_s is not None else self.connect_timeout_s))
        return [
            "ssh",
            "-F",
            "none",
            "-T",
            "-i",
            str(self.key_path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "HashKnownHosts=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            f"ConnectTimeout={connect}",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
            "-l",
            self.user,
            "--",
            self.host,
            shlex.join(remote_argv),
        ]

    def run(self, argv: list[str], timeout_s: float) -> RunResult:
        # The connect timeout stays below the overall one, so an unreachable host is reported as
        # a connection problem and an overall timeout means the remote command itself hung.
        connect = min(self.connect_timeout_s, max(1.0, timeout_s / 2))
        self.known_hosts_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = run_argv(self.argv(argv, connect), timeout_s)
        except FileNotFoundError:
            raise SshError(
                "ssh missing",
                "the OpenSSH client `ssh` is not installed on this machine "
                "(Debian/Ubuntu: apt-get install openssh-client)",
            ) from None
        except CommandTimedOut as exc:
            raise CommandTimedOut(
                f"{argv[0]} on {self.where} did not finish within {timeout_s:g} s",
                timeout_s=timeout_s,
                stdout=exc.stdout,
                stderr=exc.stderr,
            ) from None
        if result.returncode == SSH_FAILED:
            known = classify_ssh_failure(result.stderr)
            if known is not None:
                label, template = known
                key_host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
                message = template.format(
                    where=self.where,
                    key=self.key_path,
                    user=self.user,
                    known_hosts=self.known_hosts_path,
                    key_host=key_host,
                    connect_timeout=connect,
                )
                raise SshError(label, f"ssh: {message}", result.stderr)
        return result


def forget_hosts(known_hosts: Path, hosts: list[str] | None = None) -> None:
    """Drop recorded host keys: all of them (``hosts`` None: the nodes are gone), or those of the
    nodes about to be replaced. A rebuilt VM can come back on the same address with a new host
    key, which SSH would rightly refuse as a possible attack."""
    if not known_hosts.is_file():
        return
    if hosts is None:
        known_hosts.unlink()
        return
    keygen = shutil.which("ssh-keygen")
    for host in hosts:
        if host and keygen:
            subprocess.run(
                [keygen, "-R", host, "-f", str(known_hosts)], stdin=subprocess.DEVNULL, capture_output=True, check=False
            )
