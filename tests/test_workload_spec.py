"""serve.image, serve.setup and [model] as the stack file gives them (issue 11): what is accepted,
its canonical form, and the warning for an image that is not pinned. Bad input is the corpus in
tests/data/bad/115-131 (one line, exit 2, nothing run: tests/test_spec.py)."""

from __future__ import annotations

import json

import pytest
from helpers import gcp_stack

from mlinfra import Stack
from mlinfra.errors import SpecError
from mlinfra.workload import summary

DIGEST = "sha256:" + "0123456789abcdef" * 4
SERVICE_ACCOUNT = "ml-node@ml-demo-123456.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "vllm/vllm-openai:v0.6.3",
        f"vllm/vllm-openai@{DIGEST}",
        f"ghcr.io/acme/ranker:v1.2@{DIGEST}",
        "localhost:5000/team/model-server_x:2024-01",
        "us-docker.pkg.dev/my-project/serving/tgi:latest",
    ],
)
def test_image_references_are_accepted(tmp_path, image):
    assert Stack(name="img", path=tmp_path / "mlinfra.toml", serve={"image": image}).spec.serve.image == image


@pytest.mark.parametrize(
    "image", ["Vllm/Vllm", "vllm/vllm-openai:", "-rm", "a b", "vllm@sha256:12", "x:tag@sha256:" + "g" * 64, "vllm//x"]
)
def test_bad_image_references_are_refused(tmp_path, image):
    with pytest.raises(SpecError, match="serve.image: .* is not an image reference"):
        Stack(name="img", path=tmp_path / "mlinfra.toml", serve={"image": image})


def test_a_tag_without_a_digest_is_a_warning_and_a_digest_is_none(tmp_path):
    tagged = Stack(name="tag", path=tmp_path / "mlinfra.toml", serve={"image": "vllm/vllm-openai:v0.6.3"})
    assert tagged.notes()[-1] == (
        "warning: serve.image 'vllm/vllm-openai:v0.6.3' has no digest, so this deployment is not reproducible: "
        "pin it as 'vllm/vllm-openai@sha256:<digest>'"
    )
    pinned = Stack(name="pin", path=tmp_path / "mlinfra.toml", serve={"image": f"vllm/vllm-openai@{DIGEST}"})
    assert not any("serve.image" in note for note in pinned.notes())
    on_gcp = gcp_stack(tmp_path, "tag-gcp", serve={"image": "vllm/vllm-openai:v0.6.3"})
    assert on_gcp.notes()[-1].startswith("warning: serve.image 'vllm/vllm-openai:v0.6.3' has no digest")


def test_model_values_are_canonical_and_the_checksum_is_normalised(tmp_path):
    sha = "ABCDEF0123456789" * 4
    stack = gcp_stack(tmp_path, "m", gcp={"service_account": SERVICE_ACCOUNT},
                      model={"uri": "gs://my-bucket/models/demand/v3/", "sha256": f"sha256:{sha}"})
    assert stack.spec.model.sha256 == sha.lower() and stack.spec.model.dir == "/models/model"
    values = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert values["node_config_extra"]["workload"]["model_sha256"] == sha.lower()


def test_a_local_model_path_is_relative_to_the_stack_file(tmp_path):
    (tmp_path / "w").mkdir()
    stack = Stack(name="m", path=tmp_path / "mlinfra.toml", model={"uri": "w"})
    values = stack.driver.tfvars(stack.spec, stack.placement, stack.workspace)
    assert values["nodes"]["local-0"]["workload"]["model_uri"] == str(tmp_path / "w")


def test_without_an_image_the_command_is_not_split_and_setup_is_kept_in_order(tmp_path):
    stack = Stack(name="s", path=tmp_path / "mlinfra.toml", serve={"command": "echo 'x", "setup": ["b", "a"]})
    values = stack.driver.tfvars(stack.spec, stack.placement, stack.workspace)["nodes"]["local-0"]
    assert values["command"] == "echo 'x" and values["workload"]["args"] == [] and values["workload"]["setup"] == ["b", "a"]


def test_the_summary_line_names_image_model_and_setup():
    ran = {"image": "vllm/vllm-openai@" + DIGEST, "command": "--model /m",
           "model": {"uri": "gs://b/m/", "generation": "17", "sha256": "ab" * 32, "downloaded": False},
           "setup": {"steps": 2, "result": "ok"}}
    assert summary(ran) == (f"image vllm/vllm-openai@{DIGEST}; model gs://b/m/ (generation 17, sha256 abababababab, "
                            "cached); setup ok (2 step(s))")
    assert summary({}) == ""
