"""A node's workload besides serve.command: setup steps, the model, the container (issue 11).

Shared by both node launchers, copied beside each into the rendered module: the local target's
``node.py`` and the GCP node's ``launch.py``. Standard library only, any python3 >= 3.8. Every
value is data from the node's JSON settings: nothing here pastes one into shell text, except a
setup step, which is shell text the user wrote and runs as ``/bin/sh -c STEP``.

The model
---------
``fetch_model`` copies ``model.uri`` (a GCS object or prefix, read through the JSON API; or a
path on the local target) into a cache directory, verifies its checksum, and keeps it keyed by
what it was made from: each object's name, size and generation (a local file's mtime). A
restart or a heal lists the source again (a metadata call per page of objects) and downloads
nothing when the listing is the same. The checksum is SHA-256 of the single object, or, for a
prefix or directory, of its manifest: one line ``<sha256 hex>  <relative path>\\n`` per file,
sorted by path — what ``find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum |
sha256sum`` prints in the model's directory.

GCS JSON API references: objects.get and objects.list
(cloud.google.com/storage/docs/json_api/v1/objects/get, .../objects/list): metadata has
``name``, ``size`` and ``generation`` as strings; ``alt=media`` returns the bytes, and
``generation=`` pins the version that was listed.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

GCS_API = "https://storage.googleapis.com"
CHUNK = 1 << 20
PROGRESS_EVERY = 64 << 20  # a progress line per 64 MiB (and one per file)
SOURCE_FILE = "source.json"  # in a cache entry: what its model/ was made from
TAIL_LINES = 5


class WorkloadError(Exception):
    """A setup step, the model or the container failed: one line, no secret in it."""


def _say(log, text):
    log.write("mlinfra: %s\n" % text)
    log.flush()


# -- the model ------------------------------------------------------------------------------------


def _gcs_get(url, token):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return urlopen(Request(url, headers=headers), timeout=60)


def _gcs_json(url, token):
    with _gcs_get(url, token) as response:
        return json.load(response)


def gcs_objects(uri, endpoint, token):
    """([(relative name, size, generation, media URL)], single) for a gs:// object (single), or
    every object under a prefix ("gs://b/p/", or "gs://b/p" when no object has that exact name)."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    base = "%s/storage/v1/b/%s/o" % (endpoint.rstrip("/"), quote(bucket, safe=""))

    def entry(item, rel):
        media = "%s/%s?alt=media&generation=%s" % (base, quote(item["name"], safe=""), item["generation"])
        return (rel, int(item["size"]), str(item["generation"]), media)

    if name and not name.endswith("/"):
        try:
            item = _gcs_json("%s/%s" % (base, quote(name, safe="")), token)
            return [entry(item, name.rsplit("/", 1)[-1])], True
        except HTTPError as exc:
            if exc.code != 404:
                raise
        name += "/"
    found, page = [], None
    while True:
        url = "%s?prefix=%s" % (base, quote(name, safe="")) + ("&pageToken=%s" % quote(page, safe="") if page else "")
        listing = _gcs_json(url, token)
        for item in listing.get("items", []):
            if not item["name"].endswith("/"):  # a "folder" placeholder holds no bytes
                found.append(entry(item, item["name"][len(name):]))
        page = listing.get("nextPageToken")
        if not page:
            return sorted(found), False


def local_objects(path):
    """The same for a file or a directory on this machine (generation: mtime in ns)."""
    if os.path.isfile(path):
        stat = os.stat(path)
        return [(os.path.basename(path), stat.st_size, str(stat.st_mtime_ns), path)], True
    found = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            stat = os.stat(full)
            found.append((os.path.relpath(full, path), stat.st_size, str(stat.st_mtime_ns), full))
    return sorted(found), False


def _copy(source, target, token, log, done, total):
    """Copy one object to ``target``; returns (sha256 hex, bytes copied so far in all)."""
    digest = hashlib.sha256()
    reader = open(source, "rb") if source.startswith("/") else _gcs_get(source, token)
    next_line = done + PROGRESS_EVERY
    with reader, open(target, "wb") as out:
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if done >= next_line:
                _say(log, "model: %s of %s (%d%%)" % (_size(done), _size(total), 100 * done // max(total, 1)))
                next_line = done + PROGRESS_EVERY
    return digest.hexdigest(), done


def _size(n):
    return "%.1f MiB" % (n / 1048576.0)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
    os.replace(tmp, path)


def fetch_model(uri, sha256, cache, log, endpoint=GCS_API, token=""):
    """Make ``<cache>/model`` hold ``uri``, verified; returns what was fetched (for status).

    ``cache`` is the entry for this URI (the caller keys it); it is locked by the caller when
    nodes share it. Raises WorkloadError when the source cannot be read, is empty, or its
    checksum is not ``sha256``: nothing half-downloaded is ever left in ``model/``.
    """
    try:
        objects, single = gcs_objects(uri, endpoint, token) if uri.startswith("gs://") else local_objects(uri)
    except HTTPError as exc:
        raise WorkloadError("model %s: cannot list it (HTTP %s %s)" % (uri, exc.code, exc.reason)) from None
    except (URLError, OSError, ValueError, KeyError) as exc:
        raise WorkloadError("model %s: cannot list it (%s)" % (uri, exc)) from None
    if not objects:
        raise WorkloadError("model %s: no such object or prefix (nothing to download)" % uri)
    for rel, _, _, _ in objects:  # an object name is any text: "../x" must not leave the cache
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith("/") or ".." in parts or "" in parts or "\0" in rel:
            raise WorkloadError("model %s: object name %r is not a safe relative path" % (uri, rel))
    listing = [[rel, size, generation] for rel, size, generation, _ in objects]
    generation = objects[0][2] if single else max((o[2] for o in objects), key=int)  # the newest
    record = {"uri": uri, "generation": generation, "files": len(objects), "bytes": sum(o[1] for o in objects)}
    known = _read_json(os.path.join(cache, SOURCE_FILE))
    if known.get("objects") == listing and os.path.isdir(os.path.join(cache, "model")):
        if sha256 and known.get("sha256") != sha256:
            raise WorkloadError("model %s: checksum mismatch: model.sha256 is %s, the model's is %s"
                                % (uri, sha256, known.get("sha256")))
        _say(log, "model: %s is cached (generation %s), no download" % (uri, generation))
        return dict(record, sha256=known["sha256"], downloaded=False)
    partial = os.path.join(cache, "partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    _say(log, "model: downloading %s (%d file%s, %s)" % (uri, len(objects), "" if single else "s",
                                                          _size(record["bytes"])))
    manifest, done = [], 0
    try:
        for rel, _, _, source in objects:
            target = os.path.join(partial, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            hexdigest, done = _copy(source, target, token, log, done, record["bytes"])
            manifest.append("%s  %s\n" % (hexdigest, rel))
    except HTTPError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise WorkloadError("model %s: download failed (HTTP %s %s)" % (uri, exc.code, exc.reason)) from None
    except (URLError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise WorkloadError("model %s: download failed (%s)" % (uri, exc)) from None
    got = manifest[0].split()[0] if single else hashlib.sha256("".join(manifest).encode()).hexdigest()
    if sha256 and got != sha256:
        shutil.rmtree(partial, ignore_errors=True)
        raise WorkloadError("model %s: checksum mismatch: model.sha256 is %s, the download's is %s" % (uri, sha256, got))
    model = os.path.join(cache, "model")
    shutil.rmtree(model, ignore_errors=True)
    os.replace(partial, model)
    os.chmod(model, 0o755)
    _write_json(os.path.join(cache, SOURCE_FILE), {"uri": uri, "objects": listing, "sha256": got})
    _say(log, "model: %s verified (sha256 %s)%s" % (uri, got, "" if sha256 else ", not pinned: set model.sha256"))
    return dict(record, sha256=got, downloaded=True)


def cache_key(uri):
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


# -- setup ----------------------------------------------------------------------------------------


def _tail(path):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line[:200] for line in [x for x in lines if x.strip()][-TAIL_LINES:])


def run_setup(steps, env, cwd, log_path, marker, become=None):
    """Run ``serve.setup`` once: each step by /bin/sh in the node's environment, output to the
    node's log. ``marker`` remembers the steps that succeeded; the same steps are not run again.
    ``become``, when given, runs in each step's child before it starts (a GCP node drops root there).
    A failing step raises WorkloadError naming the step and quoting the log's tail."""
    digest = hashlib.sha256(json.dumps(steps).encode()).hexdigest()
    if not steps:
        return {"steps": 0, "result": "none"}
    if _read_json(marker).get("digest") == digest:
        return {"steps": len(steps), "result": "ok (done before)"}
    with open(log_path, "ab") as log:
        for i, step in enumerate(steps):
            log.write(("mlinfra: setup step %d of %d: %s\n" % (i + 1, len(steps), step)).encode())
            log.flush()
            try:
                code = subprocess.call(["/bin/sh", "-c", step], cwd=cwd or None, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, preexec_fn=become)
            except OSError as exc:  # the working directory is gone, /bin/sh is missing
                raise WorkloadError("setup step %d of %d (%s) could not start: %s" % (i + 1, len(steps), step, exc))
            if code != 0:
                log.flush()
                raise WorkloadError("setup step %d of %d (%s) failed with exit code %d; last log lines: %s"
                                    % (i + 1, len(steps), step, code, _tail(log_path)))
    _write_json(marker, {"digest": digest, "at": time.time()})
    return {"steps": len(steps), "result": "ok"}


# -- the container --------------------------------------------------------------------------------


def container_argv(engine, image, name, port, env_names, args, model_host_dir="", model_dir="", gpus=0,
                   bind="127.0.0.1"):
    """``ENGINE run`` for the server's container: the port published, every environment value
    passed by name (``--env NAME``: the engine reads it from its own environment, so no value
    is ever on a command line), the model read-only at ``model_dir``, the GPUs attached:
    ``--gpus all`` for docker (NVIDIA Container Toolkit), the CDI name for podman."""
    engine_name = os.path.basename(engine)
    publish = "%s:%d:%d" % (bind, port, port) if bind else "%d:%d" % (port, port)
    argv = [engine, "run", "--rm", "--name", name, "--publish", publish]
    for env_name in sorted(env_names):
        argv += ["--env", env_name]
    if model_host_dir:
        argv += ["--volume", "%s:%s:ro" % (model_host_dir, model_dir)]
    if gpus:
        argv += ["--gpus", "all"] if engine_name == "docker" else ["--device", "nvidia.com/gpu=all"]
    return argv + [image] + list(args)


def find_engine(preferred=""):
    """The container engine to use: ``preferred`` if given, else docker, else podman."""
    for name in [preferred] if preferred else ["docker", "podman"]:
        path = shutil.which(name)
        if path:
            return path
    raise WorkloadError("serve.image needs %s on this machine, and it is not on PATH"
                        % (preferred or "docker or podman"))
