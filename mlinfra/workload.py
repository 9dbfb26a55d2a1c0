"""The real workload of a node (issue 11): ``serve.image``, ``serve.setup`` and the ``[model]``
table — their validation, the warning for an image that is not pinned, and the values both
targets hand to their node launchers.

What happens on a node is in ``templates/node/workload.py`` (stdlib only), which the local
launcher and the GCP launcher share. Nothing here runs a container or downloads a model.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mlinfra.errors import SpecError
from mlinfra.fields import Section

# An OCI image reference, as Docker's reference grammar defines it
# (github.com/distribution/reference, reference.go): [host[:port]/]path[:tag][@sha256:hex].
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?P<name>{_HOST}{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>\w[\w.-]{{0,127}}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")
# Characters a model path may not hold: whitespace and controls (log lines, argv), and ":"
# in model.dir, which would split a container's --volume host:container:ro argument.
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
# Where model.dir may be. A GCP node without an image makes model.dir a symlink to its model cache,
# as root, at boot: a system directory (/opt, /usr/lib) or a system link (/bin -> usr/bin on merged-/usr
# images) must never be a candidate, nor mlinfra's own files. So the rule is an allow-list, not a
# deny-list: a path of its own below a prefix that conventionally holds data (FHS: /srv, /mnt;
# /models and /data by usage), at least one level down so the prefix itself is never replaced.
# /opt is left out on purpose: images install software there (/opt/conda on Deep Learning VMs).
MODEL_DIR_PREFIXES = ("/models", "/data", "/srv", "/mnt")


@dataclass(frozen=True)
class Model(Section):
    """``[model]``: weights fetched before the server starts, exported to it as ``MODEL_DIR``."""

    _key: ClassVar[str] = "model"
    uri: str  # "gs://bucket/object", "gs://bucket/prefix/"; on the local target also a path
    sha256: str = ""  # of the single object, or of the manifest of a prefix (README: "Model artifacts")
    dir: str = "/models/model"  # where the server sees it (GCP; a container on either target)

    def _check(self) -> None:
        if not self.uri.strip() or _UNSAFE.search(self.uri):
            raise SpecError("model.uri", f"{self.uri!r} must be a gs:// URI or a path, without spaces")
        if "://" in self.uri and not self.uri.startswith("gs://"):
            scheme = self.uri.split("://", 1)[0]
            raise SpecError("model.uri", f"{self.uri!r}: {scheme}:// is not supported; use gs://BUCKET/PATH or a path")
        if self.uri.startswith("gs://"):
            bucket, _, name = self.uri[len("gs://") :].partition("/")
            if not _BUCKET.match(bucket) or ".." in bucket:
                raise SpecError("model.uri", f"{self.uri!r}: {bucket!r} is not a bucket name")
            if any(part in (".", "..") for part in name.split("/")) or "//" in name or "#" in name or "?" in name:
                raise SpecError(
                    "model.uri", f"{self.uri!r}: the object path has an empty, '.' or '..' part, '#' or '?'"
                )
        sha = self.sha256.strip().lower().removeprefix("sha256:")
        if sha and not _HEX64.match(sha):
            raise SpecError("model.sha256", f"{self.sha256!r} is not a SHA-256 checksum (64 hexadecimal digits)")
        object.__setattr__(self, "sha256", sha)
        parts = self.dir.split("/")
        if (
            not self.dir.startswith("/")
            or self.dir == "/"
            or ".." in parts
            or ":" in self.dir
            or _UNSAFE.search(self.dir)
        ):
            raise SpecError(
                "model.dir", f"{self.dir!r} must be an absolute directory path (not '/', no '..', ':' or spaces)"
            )
        object.__setattr__(self, "dir", posixpath.normpath(self.dir))

    @property
    def in_gcs(self) -> bool:
        return self.uri.startswith("gs://")


def check_serve(serve: Any) -> None:
    """``serve.command``, ``serve.image`` and ``serve.setup`` (called from ``spec.Serve._check``)."""
    if not serve.command.strip():
        raise SpecError("serve.command", "must not be empty")
    if "\x00" in serve.command:
        raise SpecError("serve.command", "must not contain a NUL character")
    if serve.image and not _IMAGE.match(serve.image):
        raise SpecError(
            "serve.image",
            f"{serve.image!r} is not an image reference: use NAME[:TAG][@sha256:DIGEST], "
            "like 'vllm/vllm-openai@sha256:<64 hex digits>'",
        )
    if serve.image:
        try:
            shlex.split(serve.command)
        except ValueError as exc:
            raise SpecError(
                "serve.command", f"with serve.image it is the container's arguments, split like a shell line: {exc}"
            ) from None
    for i, step in enumerate(serve.setup):
        if not step.strip():
            raise SpecError(f"serve.setup[{i}]", "must not be empty")
        if "\x00" in step:
            raise SpecError(f"serve.setup[{i}]", "must not contain a NUL character")


def refuse_with_autoscale(spec: Any) -> None:
    """The Ray templates do not carry the workload keys: refuse them rather than drop them."""
    for key, value in (("serve.image", spec.serve.image), ("serve.setup", spec.serve.setup), ("model", spec.model)):
        if value:
            raise SpecError(key, "is not supported with [autoscale] yet")


def check_local(spec: Any) -> None:
    """The local target reads a model from a path on this machine (relative to the stack file) or
    from GCS. Whether the path exists is checked for the chosen environment only: another one's
    path may exist only on another machine (``environments.machine_checks``)."""
    from mlinfra.environments import machine_checks

    model = spec.model
    if model is None or model.in_gcs or not machine_checks():
        return
    path = model_path(spec)
    if not path.exists():
        raise SpecError("model.uri", f"{model.uri!r}: no such file or directory (a path is relative to the stack file)")


def check_gcp(spec: Any) -> None:
    """A GCP node reads its model from GCS with its service account."""
    model = spec.model
    if model is None:
        return
    if not model.in_gcs:
        raise SpecError("model.uri", f"{model.uri!r}: a GCP node reads its model from GCS: use gs://BUCKET/PATH")
    if not spec.gcp.service_account:
        raise SpecError(
            "model.uri",
            "the node reads the model with its service account: set gcp.service_account "
            "(with roles/storage.objectViewer on the bucket)",
        )
    # Without an image, the VM (as root, at boot) links model.dir to the downloaded model: it must
    # be a directory of its own, never a system one. With an image it is only a mount point inside
    # the container, and on the local target MODEL_DIR is the cache itself.
    if not spec.serve.image and not any(model.dir.startswith(prefix + "/") for prefix in MODEL_DIR_PREFIXES):
        raise SpecError(
            "model.dir",
            f"{model.dir!r} must be a directory of its own below {', '.join(MODEL_DIR_PREFIXES)} (like "
            "'/models/demand'): the node links it to the model, so it is never a system directory",
        )


def model_path(spec: Any) -> Path:
    base = spec.path.parent if spec.path else Path.cwd()
    return (base / Path(spec.model.uri).expanduser()).resolve()


def node_values(spec: Any) -> dict[str, Any]:
    """What a node launcher needs besides serve.command: one shape for both targets' tfvars."""
    model = spec.model
    uri = "" if model is None else (model.uri if model.in_gcs else str(model_path(spec)))
    return {
        "image": spec.serve.image,
        # With an image, serve.command is the container's arguments; unwritten, the image's own.
        "args": shlex.split(spec.serve.command) if spec.serve.image and "serve.command" in spec.given else [],
        "setup": list(spec.serve.setup),
        "model_uri": uri,
        "model_sha256": "" if model is None else model.sha256,
        "model_dir": "" if model is None else model.dir,
    }


def notes(spec: Any) -> list[str]:
    """The warning for an image without a digest, with the digest to pin when one is known here."""
    match = _IMAGE.match(spec.serve.image or "")
    if not match or match["digest"]:
        return []
    known = local_digest(spec.serve.image)
    pin = f"{match['name']}@{known}" if known else f"{match['name']}@sha256:<digest>"
    return [
        f"warning: serve.image {spec.serve.image!r} has no digest, so this deployment is not reproducible: pin it as {pin!r}"
    ]


def local_digest(image: str) -> str:
    """The image's registry digest as a local docker or podman knows it ("" when neither does)."""
    import shutil  # here, not at the top: every stack load imports this module

    # podman knows the digest it pulled; docker lists "name@sha256:..." per registry.
    for engine, template in (("podman", "{{.Digest}}"), ("docker", '{{join .RepoDigests " "}}')):
        if shutil.which(engine) is None:
            continue
        try:
            done = subprocess.run(
                [engine, "image", "inspect", "--format", template, image],
                capture_output=True,
                text=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        for word in done.stdout.split() if done.returncode == 0 else ():
            digest = word.rpartition("@")[2]
            if _HEX64.match(digest.removeprefix("sha256:")) and digest.startswith("sha256:"):
                return digest
    return ""


def asked(node_config: dict[str, Any]) -> dict[str, Any]:
    """What a GCP node was asked to run, from its rendered settings, in the shape the local
    launcher records; the node publishes what it did as the guest attribute mlinfra/workload."""
    values = node_config.get("workload") or {}
    if not any(values.values()):
        return {}
    found: dict[str, Any] = {"image": values.get("image", ""), "command": node_config.get("command", "")}
    if values.get("args") or values.get("image"):
        found["command"] = shlex.join(values.get("args") or [])
    if values.get("model_uri"):
        found["model"] = {"uri": values["model_uri"], "sha256": values.get("model_sha256", "")}
    if values.get("setup"):
        found["setup"] = {"steps": len(values["setup"])}
    return found


def summary(ran: dict[str, Any]) -> str:
    """One line for `status` and `verify`: what a node runs ("" when it runs serve.command alone)."""
    if not ran:
        return ""
    parts = [f"image {ran['image']}" if ran.get("image") else f"command {ran.get('command', '')!r}"]
    model = ran.get("model") or {}
    if model:
        figures = [f"generation {model['generation']}"] if model.get("generation") else []
        figures += [f"sha256 {model['sha256'][:12]}"] if model.get("sha256") else []
        figures += ["downloaded" if model["downloaded"] else "cached"] if "downloaded" in model else []
        parts.append(f"model {model['uri']}" + (f" ({', '.join(figures)})" if figures else ""))
    setup = ran.get("setup") or {}
    if setup.get("steps"):
        parts.append(f"setup {setup.get('result', 'asked')} ({setup['steps']} step(s))")
    if ran.get("error"):
        parts.append(f"error: {ran['error']}")
    return "; ".join(parts)
