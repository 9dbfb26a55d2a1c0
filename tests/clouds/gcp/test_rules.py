"""Each GCP rule refuses what Google Cloud refuses and accepts what it accepts.

The expectations are the reference's own tables (../shared/reference/gcp-gpu-facts.md,
§2.1 and §2.2 machine-readable block, §4, §5), written out here independently of
mlinfra/clouds/gcp/gpus.toml, so a wrong row in the catalog fails a test.
"""

from __future__ import annotations

import pytest

from mlinfra import Stack
from mlinfra.clouds.gcp import catalog, rules
from mlinfra.errors import SpecError

# §2.1: N1 host caps per GPU count, [max vCPUs, max GB].
N1_ATTACHABLE = {
    "nvidia-tesla-t4": {1: (48, 312), 2: (48, 312), 4: (96, 624)},
    "nvidia-tesla-p4": {1: (24, 156), 2: (48, 312), 4: (96, 624)},
    "nvidia-tesla-p100": {1: (16, 104), 2: (32, 208), 4: (96, 624)},
    "nvidia-tesla-v100": {1: (12, 78), 2: (24, 156), 4: (48, 312), 8: (96, 624)},
}
# §2.2: bundled machine type -> (accelerator, count).
BUNDLED = {
    "a2-highgpu-1g": ("nvidia-tesla-a100", 1), "a2-highgpu-2g": ("nvidia-tesla-a100", 2),
    "a2-highgpu-4g": ("nvidia-tesla-a100", 4), "a2-highgpu-8g": ("nvidia-tesla-a100", 8),
    "a2-megagpu-16g": ("nvidia-tesla-a100", 16),
    "a2-ultragpu-1g": ("nvidia-a100-80gb", 1), "a2-ultragpu-2g": ("nvidia-a100-80gb", 2),
    "a2-ultragpu-4g": ("nvidia-a100-80gb", 4), "a2-ultragpu-8g": ("nvidia-a100-80gb", 8),
    "a3-highgpu-1g": ("nvidia-h100-80gb", 1), "a3-highgpu-2g": ("nvidia-h100-80gb", 2),
    "a3-highgpu-4g": ("nvidia-h100-80gb", 4), "a3-highgpu-8g": ("nvidia-h100-80gb", 8),
    "a3-megagpu-8g": ("nvidia-h100-mega-80gb", 8), "a3-ultragpu-8g": ("nvidia-h200-141gb", 8),
    "a4-highgpu-8g": ("nvidia-b200", 8), "a4-highgpu-8g-lowmem": ("nvidia-b200", 8),
    "g2-standard-4": ("nvidia-l4", 1), "g2-standard-8": ("nvidia-l4", 1), "g2-standard-12": ("nvidia-l4", 1),
    "g2-standard-16": ("nvidia-l4", 1), "g2-standard-24": ("nvidia-l4", 2), "g2-standard-32": ("nvidia-l4", 1),
    "g2-standard-48": ("nvidia-l4", 4), "g2-standard-96": ("nvidia-l4", 8),
    "g4-standard-48": ("nvidia-rtx-pro-6000", 1), "g4-standard-96": ("nvidia-rtx-pro-6000", 2),
    "g4-standard-192": ("nvidia-rtx-pro-6000", 4), "g4-standard-384": ("nvidia-rtx-pro-6000", 8),
}
# §4: no plain on-demand capacity.
NO_ON_DEMAND = {"a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g", "a3-ultragpu-8g", "a4-highgpu-8g", "a4-highgpu-8g-lowmem"}
N1_SIZES = {"standard": (3.75, [1, 2, 4, 8, 16, 32, 64, 96]), "highmem": (6.5, [2, 4, 8, 16, 32, 64, 96]),
            "highcpu": (0.9, [2, 4, 8, 16, 32, 64, 96])}


def stack(**compute) -> Stack:
    gcp_section = compute.pop("gcp", {})
    return Stack(name="rules", target="gcp", gcp={"project": "ml-demo-123456", **gcp_section}, compute=compute)


def refused(key: str, **compute) -> str:
    with pytest.raises(SpecError) as info:
        stack(**compute)
    assert info.value.key == key, str(info.value)
    assert "\n" not in str(info.value)
    return info.value.detail


def zone_for(gpu: str, machine: str | None = None) -> str:
    """A zone that offers the GPU (and machine type): us-central1 when it has one."""
    item = catalog.gpus()[gpu]
    bundled = catalog.bundled_machine_types().get(machine) if machine else None
    zones = catalog.zones_for(item, bundled)
    if zones is None:
        return "us-central1-b"  # not verified; the user lists it
    return next((z for z in zones if z.startswith("us-central1-")), zones[0])


def with_zone(gpu: str, machine: str | None = None, **compute) -> dict:
    zone = zone_for(gpu, machine)
    return dict(gpu=gpu, gcp={"regions": [catalog.region_of(zone)], "zones": [zone]},
                **({"machine_type": machine} if machine else {}), **compute)


# -- the catalog agrees with the reference ----------------------------------------------------------

def test_catalog_matches_the_reference_tables():
    for gpu, limits in N1_ATTACHABLE.items():
        assert catalog.gpus()[gpu].attached and catalog.gpus()[gpu].n1_limits == {c: (v, float(g)) for c, (v, g) in limits.items()}
    for name, (gpu, count) in BUNDLED.items():
        machine = catalog.bundled_machine_types()[name]
        assert (machine.gpu, machine.gpus) == (gpu, count), name
        assert machine.on_demand == (name not in NO_ON_DEMAND), name
    assert set(catalog.bundled_machine_types()) <= set(BUNDLED) | {"a3-ultragpu-8g-nolssd"}
    assert catalog.bundled_machine_types()["a3-ultragpu-8g-nolssd"].on_demand is False


# -- N1 + attached GPUs (§2.1) -----------------------------------------------------------------------

@pytest.mark.parametrize("gpu", sorted(N1_ATTACHABLE))
def test_n1_gpu_counts(gpu):
    for count in range(1, 17):
        if count in N1_ATTACHABLE[gpu]:
            stack(**with_zone(gpu, gpu_count=count))
        else:
            detail = refused("compute.gpu_count", **with_zone(gpu, gpu_count=count))
            assert detail.startswith(f"{count}× {gpu} is not allowed: use ")


@pytest.mark.parametrize("gpu,count", [(g, c) for g in sorted(N1_ATTACHABLE) for c in N1_ATTACHABLE[g]])
def test_n1_host_caps(gpu, count):
    max_vcpus, max_gb = N1_ATTACHABLE[gpu][count]
    for kind, (per_vcpu, sizes) in N1_SIZES.items():
        for vcpus in sizes:
            machine = f"n1-{kind}-{vcpus}"
            # Zones where 4x P100 has a smaller cap are avoided here; they have their own test.
            compute = with_zone(gpu, gpu_count=count, machine_type=machine)
            if gpu == "nvidia-tesla-p100":
                compute["gcp"] = {"regions": ["us-central1"], "zones": ["us-central1-c"]}
            if vcpus <= max_vcpus and vcpus * per_vcpu <= max_gb:
                stack(**compute)
            else:
                detail = refused("compute.machine_type", **compute)
                assert f"allows at most {max_vcpus} vCPUs and {max_gb:g} GB" in detail


def test_p100_x4_has_a_smaller_cap_in_three_zones():
    # n1-standard-64: 64 vCPUs, 240 GB: fine for 4x P100 in general, over 208 GB in us-east1-c.
    stack(gpu="p100", gpu_count=4, machine_type="n1-standard-64", gcp={"regions": ["us-central1"], "zones": ["us-central1-c"]})
    detail = refused("gcp.zones[0]", gpu="p100", gpu_count=4, machine_type="n1-standard-64",
                     gcp={"regions": ["us-east1"], "zones": ["us-east1-c"]})
    assert "us-east1-c does not offer nvidia-tesla-p100" in detail and "us-east1-b" in detail
    stack(gpu="p100", gpu_count=4, machine_type="n1-standard-32", gcp={"regions": ["us-east1"], "zones": ["us-east1-c"]})


@pytest.mark.parametrize("machine", ["e2-standard-4", "n2-standard-8", "c2-standard-8", "a2-highgpu-1g", "g2-standard-4",
                                     "f1-micro", "g1-small", "n1-standard-3", "n1-ultramem-40"])
def test_attached_gpus_need_an_n1_host(machine):
    detail = refused("compute.machine_type", gpu="t4", machine_type=machine)
    assert machine in detail


def test_n1_custom_types_are_checked_against_the_cap():
    stack(gpu="v100", machine_type="custom-12-78848")  # 12 vCPUs, 77 GB
    assert "allows at most 12 vCPUs" in refused("compute.machine_type", gpu="v100", machine_type="custom-16-61440")


# -- bundled machine types (§2.2) ---------------------------------------------------------------------

@pytest.mark.parametrize("machine", sorted(BUNDLED))
def test_bundled_type_with_its_own_gpu_and_count(machine):
    gpu, count = BUNDLED[machine]
    spot = machine in NO_ON_DEMAND
    built = stack(**with_zone(gpu, machine, gpu_count=count, spot=spot))
    assert rules.placement(built.placement.resolved)[0].machine_type == machine
    other = 2 if count == 1 else 1
    detail = refused("compute.gpu_count", **with_zone(gpu, machine, gpu_count=other, spot=spot))
    assert detail.startswith(f"{machine} comes with {count}× {gpu}, not {other}: set gpu_count = {count}")
    wrong = "nvidia-l4" if gpu != "nvidia-l4" else "nvidia-tesla-a100"
    detail = refused("compute.machine_type", gpu=wrong, machine_type=machine, gpu_count=count, spot=True)
    assert f"comes with {gpu}, not {wrong}" in detail


def test_bundled_type_refuses_a_cpu_only_stack():
    assert "set compute.gpu = 'l4'" in refused("compute.machine_type", machine_type="g2-standard-4")


@pytest.mark.parametrize("machine", ["g4-standard-6", "g4-standard-12", "g4-standard-24"])
def test_fractional_gpu_shapes_are_refused(machine):
    assert "fractional" in refused("compute.machine_type", gpu="rtx-pro-6000", machine_type=machine)


def test_counts_without_a_machine_type_are_refused_with_the_offer():
    detail = refused("compute.gpu_count", gpu="l4", gpu_count=3)
    assert detail == "3× nvidia-l4 is not offered: machine types carry 1 (g2-standard-4), 2 (g2-standard-24), 4 (g2-standard-48), 8 (g2-standard-96)"
    assert "8 (a3-megagpu-8g)" in refused("compute.gpu_count", gpu="h100-mega", gpu_count=1)


# -- consumption options (§4) -------------------------------------------------------------------------

@pytest.mark.parametrize("machine", sorted(NO_ON_DEMAND))
def test_spot_only_types_refuse_on_demand_and_name_spot(machine):
    gpu, count = BUNDLED[machine]
    detail = refused("compute.spot", **with_zone(gpu, machine, gpu_count=count))
    assert "no on-demand capacity" in detail and "set compute.spot = true" in detail
    stack(**with_zone(gpu, machine, gpu_count=count, spot=True))


@pytest.mark.parametrize("machine", ["a3-highgpu-8g", "a3-megagpu-8g", "a2-highgpu-1g", "a2-ultragpu-1g", "g2-standard-4"])
def test_on_demand_types_accept_on_demand(machine):
    gpu, count = BUNDLED[machine]
    stack(**with_zone(gpu, machine, gpu_count=count))


def test_spot_termination_needs_spot():
    stack(gpu="t4", spot=True, gcp={"spot_termination": "DELETE"})
    assert "applies only to Spot" in refused("gcp.spot_termination", gpu="t4", gcp={"spot_termination": "delete"})
    assert "'STOP', 'DELETE'" in refused("gcp.spot_termination", gpu="t4", spot=True, gcp={"spot_termination": "kill"})


# -- zones and regions (§5) ---------------------------------------------------------------------------

def test_zone_must_offer_the_gpu():
    stack(gpu="t4", gcp={"zones": ["us-central1-a"]})
    detail = refused("gcp.zones[0]", gpu="h200", gpu_count=8, spot=True, gcp={"zones": ["us-central1-a"]})
    assert detail == "us-central1-a does not offer a3-ultragpu-8g (nvidia-h200-141gb); zones in us-central1 that do: us-central1-b"


def test_region_must_offer_the_gpu():
    detail = refused("gcp.regions[0]", gpu="l4", gcp={"regions": ["europe-north1"]})
    assert detail.startswith("europe-north1 has no zone offering g2-standard-4 (nvidia-l4); regions that do: asia-east1,")


def test_bundled_types_use_the_machine_type_zones_too():
    # H100 Mega accelerator rows list asia-northeast3-a; the a3-megagpu-8g VM rows do not.
    assert "asia-northeast3-a" in catalog.gpus()["nvidia-h100-mega-80gb"].zones
    assert "regions that do: asia-northeast1," in refused(
        "gcp.regions[0]", gpu="h100-mega", gpu_count=8, gcp={"regions": ["asia-northeast3"], "zones": ["asia-northeast3-a"]})
    # europe-west3-a offers H100 and a3-highgpu-8g, but a3-highgpu-1g VM rows lack it.
    stack(gpu="h100", gpu_count=8, gcp={"regions": ["europe-west3"], "zones": ["europe-west3-a"]})
    refused("gcp.zones[0]", gpu="h100", gpu_count=1, spot=True, gcp={"regions": ["europe-west3"], "zones": ["europe-west3-a"]})


def test_zone_names_and_regions():
    assert "not a zone name" in refused("gcp.zones[0]", gpu="t4", gcp={"zones": ["us-central1"]})
    assert "add 'europe-west4' to gcp.regions" in refused("gcp.zones[0]", gpu="t4", gcp={"zones": ["europe-west4-a"]})
    assert "listed twice" in refused("gcp.zones", gpu="t4", gcp={"zones": ["us-central1-a", "us-central1-a"]})


def test_unverified_zones_must_be_listed():
    detail = refused("gcp.zones", gpu="rtx-pro-6000")
    assert "no verified zones for nvidia-rtx-pro-6000" in detail
    built = stack(gpu="rtx-pro-6000", gcp={"zones": ["us-central1-b"]})
    assert rules.placement(built.placement.resolved)[0].zone == "us-central1-b"


def test_refused_accelerators():
    for name, word in [("nvidia-tesla-t4-vws", "vWS"), ("nvidia-l4-vws", "vWS"), ("nvidia-tesla-k80", "end of support"),
                       ("nvidia-gb200", "Arm64")]:
        assert word in refused("compute.gpu", gpu=name)


# -- defaults: the smallest valid choice, said out loud ------------------------------------------------

@pytest.mark.parametrize("gpu,count,expected", [("t4", 1, "n1-standard-4"), ("v100", 8, "n1-standard-4"),
                                                ("l4", 1, "g2-standard-4"), ("l4", 2, "g2-standard-24"),
                                                ("a100", 16, "a2-megagpu-16g"), ("h100", 8, "a3-highgpu-8g"),
                                                ("a100-80gb", 4, "a2-ultragpu-4g")])
def test_default_machine_type_is_the_smallest_valid(gpu, count, expected):
    built = stack(gpu=gpu, gpu_count=count)
    assert {n.machine_type for n in rules.placement(built.placement.resolved)} == {expected}
    assert f"compute.machine_type: chose {expected}" in built.notes()[0]


def test_default_zone_offers_gpu_and_machine_type_and_is_reported():
    built = stack(gpu="p100", gcp={"regions": ["us-central1", "europe-west1"]})
    assert [n.zone for n in rules.placement(built.placement.resolved)] == ["us-central1-c", "europe-west1-b"]
    lines = built.notes()
    assert "gcp.zones: chose us-central1-c for us-central1 (the first zone that offers p100)" in lines
    assert any(line.startswith("gcp.image: chose projects/deeplearning-platform-release/") for line in lines)


def test_replicas_spread_over_listed_zones():
    built = stack(gpu="t4", replicas=3, gcp={"zones": ["us-central1-b", "us-central1-f"]})
    assert [n.zone for n in rules.placement(built.placement.resolved)] == ["us-central1-b", "us-central1-f", "us-central1-b"]
    assert not any(line.startswith("gcp.zones") for line in built.notes())


def test_image_defaults_follow_the_driver_minimums():
    assert catalog.default_image(catalog.gpus()["nvidia-rtx-pro-6000"]).endswith("-nvidia-580")  # 580+ (§7)
    for name in ("nvidia-b200", "nvidia-h200-141gb", "nvidia-h100-80gb", "nvidia-tesla-t4"):
        family = catalog.default_image(catalog.gpus()[name]).rsplit("-", 1)[1]
        assert int(family) >= 570


def test_other_gcp_inputs():
    assert "at least 50" in refused("compute.disk_gb", gpu="t4", disk_gb=20)
    stack(gpu="t4", disk_gb=20, gcp={"image": "ubuntu-os-accelerator-images/ubuntu-accelerator-2404-amd64-with-nvidia-570"})
    assert "not an image" in refused("gcp.image", gpu="t4", gcp={"image": "bad image!"})
    with pytest.raises(SpecError, match="serve.allow_cidrs: is empty"):
        Stack(name="x", target="gcp", gcp={"project": "ml-demo-123456"}, serve={"allow_cidrs": []})
    with pytest.raises(SpecError, match="gcp.service_account"):
        Stack(name="x", target="gcp", gcp={"project": "ml-demo-123456", "service_account": "nobody"})
    with pytest.raises(SpecError, match="gcp.network"):
        Stack(name="x", target="gcp", gcp={"project": "ml-demo-123456", "network": "Bad Net"})


def test_local_target_ignores_gcp_rules():
    # GPU placement rules are GCP's: a local stack with any GPU name stays valid.
    assert Stack(name="x", compute={"gpu": "h200", "gpu_count": 3}).compute.gpu == "h200"
