"""The gpu check: parser and diagnosis on every recorded nvidia-smi output, the local runner
with the stand-in on PATH, and the remote path through a real OpenSSH server on loopback.

Only nvidia-smi is a stand-in (tests/standins/nvidia-smi, replaying tests/data/nvidia-smi/);
ssh, sshd, the remote login shell, keys and known_hosts are the real ones.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlinfra.clouds.gcp import catalog
from mlinfra.verify import gpu
from mlinfra.verify.ssh import SshError, SshRunner
from helpers import DATA, ROOT

FIXTURES = DATA / "nvidia-smi"
STANDINS = ROOT / "tests" / "standins"


@dataclass
class Fixture:
    path: Path
    meta: dict
    body: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.meta["query"].split(",")) if "query" in self.meta else gpu.QUERY_FIELDS


def load(name: str) -> Fixture:
    path = FIXTURES / f"{name}.txt"
    header, _, body = path.read_text().partition("---\n")
    meta = dict(line[2:].split(": ", 1) for line in header.splitlines() if line.startswith("# "))
    return Fixture(path, meta, body)


ALL = sorted(p.stem for p in FIXTURES.glob("*.txt"))
OUTPUTS = [name for name in ALL if load(name).meta["exit"] == "0" and "sleep" not in load(name).meta]
FAILURES = {  # fixture -> the diagnosis label it must get
    "driver-not-loaded": "driver not loaded",
    "version-mismatch": "driver/library mismatch",
    "no-devices": "no devices",
    "command-not-found": "nvidia-smi missing",
    "invalid-field": "query field unknown",
    "invalid-field-recorded": "query field unknown",
}
HEALTHY = [("t4", "t4", 1), ("a100-40gb", "a100", 1), ("a100-80gb-x2", "a100-80gb", 2), ("h100", "h100", 1),
           ("h100-recorded", "h100", 1)]


def test_every_fixture_names_its_source_and_is_covered():
    assert len(ALL) >= 15
    for name in ALL:
        fixture = load(name)
        assert fixture.meta.get("source"), f"{name}: no source named"
        assert fixture.meta.get("stream") in ("stdout", "stderr"), name
        assert name in OUTPUTS or name in FAILURES or name == "hang", f"{name} is not tested"


# --- parser ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OUTPUTS)
def test_parser_reads_every_recorded_output(name):
    fixture = load(name)
    gpus = gpu.parse(fixture.body, fixture.fields)
    assert len(gpus) == len([line for line in fixture.body.splitlines() if line.strip()])
    for info in gpus:
        assert info.name and "," not in info.name and not info.name[0].isdigit()


def test_parser_keeps_names_with_spaces_whole():
    # The whitespace-splitting parser of Ricks-Lab/gpu-utils#83 shifted every column after the name.
    fixture = load("rtx2080-nounits")
    [info] = gpu.parse(fixture.body, fixture.fields)
    assert (info.name, info.driver_version, info.uuid) == ("GeForce RTX 2080", "440.64",
                                                          "GPU-22b2c6ac-2d49-4863-197c-9c469071178a")
    assert (info.memory_total_mib, info.temperature_c, info.utilization_pct, info.pstate) == (7979, 45, 86, "P2")


def test_parser_full_query_row():
    [info] = gpu.parse(load("h100").body)
    assert info == gpu.GpuInfo(0, "NVIDIA H100 80GB HBM3", "GPU-e5f404f3-cc2a-cf0c-219f-dcf1a4e223f2", "525.89.02",
                               81559, 0, 34, 0, 0, "P0")
    names = [g.name for g in gpu.parse(load("tensorlake-index-name-uuid").body, ("index", "name", "uuid"))]
    assert names == ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 80GB HBM3"]


@pytest.mark.parametrize("unknown", ["[N/A]", "N/A", "[Not Supported]", "[Unknown Error]"])
def test_unknown_values_are_none_never_zero(unknown):
    row = f"0, Tesla T4, GPU-1, 525.89.02, 15360, {unknown}, {unknown}, {unknown}, {unknown}, {unknown}\n"
    [info] = gpu.parse(row)
    assert (info.memory_used_mib, info.temperature_c, info.utilization_pct, info.ecc_uncorrected, info.pstate) == (
        None, None, None, None, None)
    assert "ECC uncorrected n/a" in gpu.summarize([info])


def test_parser_refuses_rows_it_cannot_read():
    with pytest.raises(gpu.ParseError, match="has 3 values, expected 10"):
        gpu.parse(load("tensorlake-t4-row").body)
    with pytest.raises(gpu.ParseError, match="not a number"):
        gpu.parse("0, Tesla T4, GPU-1, 525.89.02, lots, 0, 34, 0, 0, P8")


# --- diagnosis ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,label", FAILURES.items())
def test_each_failure_text_gets_its_diagnosis(name, label):
    fixture = load(name)
    streams = (fixture.body, "") if fixture.meta["stream"] == "stdout" else ("", fixture.body)
    found = gpu.diagnose(int(fixture.meta["exit"]), *streams)
    assert found is not None and found.label == label
    assert "Fix: " in str(found) and "\n" not in str(found)
    # The text alone identifies it, whatever the exit status turns out to be.
    assert gpu.diagnose(1, *streams).label == label


def test_diagnosis_by_return_code_and_timeout():
    assert gpu.diagnose(15, "", "").label == "fallen off the bus"
    assert gpu.diagnose(12, "", "").label == "NVML library missing"
    assert gpu.diagnose(None, "", "", 20).label == "timed out"
    assert gpu.diagnose(0, load("h100").body, "") is None


def test_every_catalog_gpu_has_nvidia_smi_names():
    assert set(gpu.NVIDIA_SMI_NAMES) == set(catalog.gpus())
    assert gpu.model_matches("nvidia-tesla-a100", "A100-SXM4-40GB")  # older drivers omit "NVIDIA "
    assert gpu.model_matches("nvidia-h100-80gb", "NVIDIA H100 PCIe")
    assert not gpu.model_matches("nvidia-h100-80gb", gpu.parse(load("h100-nvl-name").body, ("name", "x"))[0].name)
    assert not gpu.model_matches("nvidia-tesla-t4", None)


# --- local runner: the stand-in on PATH ---------------------------------------------------------

@pytest.fixture
def standin(monkeypatch, tmp_path):
    """Puts the stand-in first on PATH; returns a function that picks the fixture it replays."""
    argv_log = tmp_path / "argv.log"
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLINFRA_NVSMI_ARGV_LOG", str(argv_log))

    def use(name: str) -> Path:
        monkeypatch.setenv("MLINFRA_NVSMI_FIXTURE", str(FIXTURES / f"{name}.txt"))
        return argv_log
    return use


@pytest.mark.parametrize("name,alias,count", HEALTHY)
def test_local_pass(standin, name, alias, count):
    argv_log = standin(name)
    result = gpu.check_gpu("local-0", catalog.lookup_gpu(alias), count, gpu.LocalRunner())
    assert result.status == "pass", result.message
    assert argv_log.read_text().splitlines() == list(gpu.COMMAND[1:])
    assert len(result.details["gpus"]) == count and result.details["returncode"] == 0


def test_local_summary_has_the_key_figures(standin):
    standin("h100")
    result = gpu.check_gpu("local-0", catalog.lookup_gpu("h100"), 1, gpu.LocalRunner())
    assert result.summary == "1× NVIDIA H100 80GB HBM3, driver 525.89.02, 81559 MiB, 34°C, util 0%, ECC uncorrected 0"
    assert result.details["gpus"][0]["uuid"] == "GPU-e5f404f3-cc2a-cf0c-219f-dcf1a4e223f2"


def test_local_wrong_model_count_and_ecc(standin):
    standin("l4")
    result = gpu.check_gpu("n", catalog.lookup_gpu("t4"), 1, gpu.LocalRunner())
    assert result.status == "fail" and result.message == "expected 1× nvidia-tesla-t4 (Tesla T4), found 1× NVIDIA L4"
    standin("a100-80gb-x2")
    result = gpu.check_gpu("n", catalog.lookup_gpu("a100-80gb"), 4, gpu.LocalRunner())
    assert result.message == ("expected 4× nvidia-a100-80gb (NVIDIA A100-SXM4-80GB), "
                              "found 2× NVIDIA A100-SXM4-80GB")
    standin("h100-ecc-errors")
    result = gpu.check_gpu("n", catalog.lookup_gpu("h100"), 1, gpu.LocalRunner())
    assert result.status == "fail" and "2 uncorrected ECC errors" in result.message
    assert "ECC uncorrected 2" in result.summary


def test_local_unknown_ecc_passes_but_says_so(standin):
    standin("t4-ecc-na")
    result = gpu.check_gpu("n", catalog.lookup_gpu("t4"), 1, gpu.LocalRunner())
    assert result.status == "pass" and result.summary.endswith("ECC uncorrected n/a")
    assert result.details["gpus"][0]["ecc_uncorrected"] is None


@pytest.mark.parametrize("name,label", FAILURES.items())
def test_local_failures_are_diagnosed(standin, name, label):
    standin(name)
    result = gpu.check_gpu("n", catalog.lookup_gpu("t4"), 1, gpu.LocalRunner())
    assert result.status == "fail" and result.summary == label and "Fix: " in result.message


def test_local_binary_really_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nvidia-smi at all
    result = gpu.check_gpu("n", catalog.lookup_gpu("t4"), 1, gpu.LocalRunner())
    assert result.summary == "nvidia-smi missing" and "not installed" in result.message


def test_local_hang_is_cut_off_at_the_timeout(standin):
    standin("hang")
    started = time.monotonic()
    result = gpu.check_gpu("n", catalog.lookup_gpu("t4"), 1, gpu.LocalRunner(), timeout_s=1)
    assert time.monotonic() - started < 3  # the stand-in would sleep 8 s
    assert result.summary == "timed out" and "within 1 s" in result.message and "Xid" in result.message


def test_no_gpu_requested_is_skipped():
    result = gpu.check_gpu("n", None, 1, runner=None)
    assert result.status == "skip" and result.message == 'skipped: gpu = "none"'


# --- remote: a real sshd on loopback --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_openssh() -> str:
    """Path of sshd; installs openssh-server/-client from Debian when missing (CI is a fresh machine)."""
    search = f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}"
    missing = sorted({package for binary, package in (("sshd", "openssh-server"), ("ssh", "openssh-client"),
                                                      ("ssh-keygen", "openssh-client"))
                      if not shutil.which(binary, path=search)})
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail(f"the SSH tests need {' '.join(missing)}: apt-get install -y {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=120"]  # other test set-ups may be installing at the same time
        for argv in (["apt-get", *lock, "update", "-q"],
                     ["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *missing]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode:
                pytest.fail(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return shutil.which("sshd", path=search)


def keygen(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Sshd:
    port: int
    dir: Path
    user: str
    key: Path  # the stack's key, authorized
    other_key: Path  # a key the server does not know
    current: Path  # the fixture the stand-in replays behind sshd
    argv_log: Path

    def use(self, name: str) -> None:
        shutil.copyfile(FIXTURES / f"{name}.txt", self.current)

    def runner(self, known_hosts: Path, key: Path | None = None, **kwargs) -> SshRunner:
        return SshRunner("127.0.0.1", self.port, self.user, key or self.key, known_hosts, **kwargs)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    binary = ensure_openssh()
    root = tmp_path_factory.mktemp("sshd")
    user = pwd.getpwuid(os.getuid()).pw_name
    host_key = root / "host" / "ssh_host_ed25519_key"
    keygen(host_key)
    stack_pub = keygen(root / "stack" / "id_ed25519")
    keygen(root / "other" / "id_ed25519")
    current, argv_log = root / "current.txt", root / "argv.log"
    # The remote login shell finds the stand-in through PATH, set per key by sshd itself.
    environment = {"PATH": f"{STANDINS}:/usr/local/bin:/usr/bin:/bin",
                   "MLINFRA_NVSMI_FIXTURE": str(current), "MLINFRA_NVSMI_ARGV_LOG": str(argv_log)}
    options = ",".join(f'environment="{k}={v}"' for k, v in environment.items())
    (root / "authorized_keys").write_text(f"{options} {stack_pub}\n")
    config = root / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "UsePAM no", "StrictModes no",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", f"AllowUsers {user}", "PermitUserEnvironment PATH,MLINFRA_*",
        # Classic ECDH only: the default post-quantum exchange costs ~0.3 s per connection on a
        # small CI machine, and the client side (what mlinfra ships) is unchanged.
        "KexAlgorithms curve25519-sha256", "LogLevel VERBOSE", "",
    ]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    port = free_port()
    log = (root / "sshd.log").open("w")
    process = subprocess.Popen([binary, "-D", "-e", "-p", str(port), "-f", str(config)],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"sshd did not start:\n{(root / 'sshd.log').read_text()}")
        time.sleep(0.02)
    yield Sshd(port, root, user, root / "stack" / "id_ed25519", root / "other" / "id_ed25519", current, argv_log)
    process.terminate()
    process.wait(timeout=10)
    log.close()
    # A stand-in left sleeping by the hang test (sshd does not kill a session's command when the
    # client goes away, just as a wedged nvidia-smi stays on a real node): end it by its pid.
    marker = f"MLINFRA_NVSMI_FIXTURE={current}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def user_known_hosts() -> str:
    path = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("name,alias,count", HEALTHY)
def test_remote_pass(sshd, tmp_path, name, alias, count):
    sshd.use(name)
    known_hosts = tmp_path / "ssh" / "known_hosts"  # does not exist yet: first contact
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu(alias), count, sshd.runner(known_hosts))
    assert result.status == "pass", result.message
    assert sshd.argv_log.read_text().splitlines() == list(gpu.COMMAND[1:])
    # accept-new recorded the host in the stack's own file, and only there.
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 " in known_hosts.read_text()
    assert f"[127.0.0.1]:{sshd.port}" not in user_known_hosts()


def test_remote_mismatch_count_and_ecc(sshd, tmp_path):
    runner = sshd.runner(tmp_path / "known_hosts")
    sshd.use("l4")
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 1, runner)
    assert result.status == "fail" and result.message == "expected 1× nvidia-tesla-t4 (Tesla T4), found 1× NVIDIA L4"
    sshd.use("t4")
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 2, runner)
    assert result.message == "expected 2× nvidia-tesla-t4 (Tesla T4), found 1× Tesla T4"
    sshd.use("h100-ecc-errors")
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("h100"), 1, runner)
    assert result.status == "fail" and "uncorrected ECC errors" in result.message


@pytest.mark.parametrize("name,label", FAILURES.items())
def test_remote_failures_are_diagnosed(sshd, tmp_path, name, label):
    sshd.use(name)
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 1, sshd.runner(tmp_path / "known_hosts"))
    assert result.status == "fail" and result.summary == label, result.message
    assert result.details["returncode"] == int(load(name).meta["exit"])


def test_remote_hang_is_cut_off_at_the_timeout(sshd, tmp_path):
    sshd.use("hang")
    started = time.monotonic()
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 1, sshd.runner(tmp_path / "kh"), timeout_s=2)
    assert time.monotonic() - started < 4.5
    assert result.summary == "timed out"
    assert f"nvidia-smi on {sshd.user}@127.0.0.1:{sshd.port} did not finish within 2 s" in result.message


def test_remote_host_key_changed(sshd, tmp_path):
    sshd.use("t4")
    known_hosts = tmp_path / "known_hosts"
    impostor = keygen(tmp_path / "impostor" / "key")  # "the node" used to have another host key
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(impostor.split()[:2])}\n")
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 1, sshd.runner(known_hosts))
    assert result.status == "fail" and result.summary == "host key changed"
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known_hosts}" in result.message
    assert "\n" not in result.message


def test_remote_wrong_key_is_an_auth_failure(sshd, tmp_path):
    sshd.use("t4")
    with pytest.raises(SshError) as caught:
        sshd.runner(tmp_path / "known_hosts", key=sshd.other_key).run(list(gpu.COMMAND), 10)
    assert caught.value.label == "auth failed"
    assert str(sshd.other_key) in str(caught.value) and "refused the stack's SSH key" in str(caught.value)


def test_remote_connection_refused(sshd, tmp_path):
    runner = SshRunner("127.0.0.1", free_port(), sshd.user, sshd.key, tmp_path / "known_hosts")
    result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 1, runner)
    assert result.summary == "connection refused" and "sshd is not running" in result.message


def test_remote_silent_server_is_a_connect_timeout(sshd, tmp_path):
    with socket.socket() as silent:  # accepts TCP (the kernel does) but never sends an SSH banner
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        runner = SshRunner("127.0.0.1", silent.getsockname()[1], sshd.user, sshd.key, tmp_path / "kh",
                           connect_timeout_s=1)
        started = time.monotonic()
        result = gpu.check_gpu("gcp-0", catalog.lookup_gpu("t4"), 1, runner, timeout_s=10)
    assert time.monotonic() - started < 4
    assert result.summary == "connect timeout" and "within 1 s" in result.message


def test_remote_arguments_are_quoted_not_interpreted(sshd, tmp_path):
    sshd.use("t4")
    marker = tmp_path / "pwned"
    hostile = f"--query-gpu=name; touch {marker}"
    sshd.runner(tmp_path / "known_hosts").run(["nvidia-smi", hostile, "$(id)"], 10)
    assert sshd.argv_log.read_text().splitlines() == [hostile, "$(id)"]
    assert not marker.exists()


@pytest.mark.parametrize("host,user,port", [("-oProxyCommand=touch x", "root", 22), ("node", "-l", 22),
                                            ("a b", "root", 22), ("node", "root", 0)])
def test_ssh_values_that_would_be_options_are_refused(host, user, port, tmp_path):
    with pytest.raises(ValueError):
        SshRunner(host, port, user, tmp_path / "k", tmp_path / "kh")


def test_ssh_argv_pins_key_known_hosts_and_batch_mode(tmp_path):
    argv = SshRunner("10.0.0.5", 22, "mlinfra", tmp_path / "id", tmp_path / "kh").argv(list(gpu.COMMAND))
    joined = " ".join(argv)
    for option in ("-F none", f"-i {tmp_path / 'id'}", "IdentitiesOnly=yes", f"UserKnownHostsFile={tmp_path / 'kh'}",
                   "StrictHostKeyChecking=accept-new", "BatchMode=yes", "ConnectTimeout=10"):
        assert option in joined
    assert argv[-3:] == ["--", "10.0.0.5", " ".join(gpu.COMMAND)]


def test_recorded_h100_output_replays_to_the_recorded_verdict():
    """The real H100 run (tests/data/verify/h100-local-2026-11-22.json) came from the real
    nvidia-smi text in h100-recorded.txt: replaying that text must give the same verdict."""
    import json

    recorded = json.loads((FIXTURES.parent / "verify" / "h100-local-2026-11-22.json").read_text())
    real = next(r for r in recorded["results"] if r["check"] == "gpu")

    class Replay:  # hands back the recorded stdout, as the real runner got it
        def run(self, argv, timeout_s):
            assert list(argv) == real["details"]["command"]
            return gpu.RunResult(0, load("h100-recorded").body, "")

    replayed = gpu.check_gpu(real["node"], catalog.lookup_gpu("h100"), 1, Replay())
    assert replayed.passed and real["passed"]
    assert replayed.summary == real["summary"]
    assert replayed.details["gpus"] == real["details"]["gpus"]


def test_forget_hosts_drops_only_the_replaced_nodes_keys(tmp_path):
    from mlinfra.verify.ssh import forget_hosts

    known = tmp_path / "known_hosts"
    known.write_text("10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld1\n"
                     "10.0.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeep2\n")
    forget_hosts(known, ["10.0.0.1"])  # heal replaced this node: its old key must not block the new VM
    assert [line.split()[0] for line in known.read_text().splitlines()] == ["10.0.0.2"]
    forget_hosts(known, None)  # down: every VM is gone
    assert not known.exists()
