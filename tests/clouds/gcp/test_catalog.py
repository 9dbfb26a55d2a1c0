"""The GPU catalog as users see it: `mlinfra gpus` rows and a stack's estimated cost."""

from __future__ import annotations

import json

import pytest

from mlinfra import Stack
from mlinfra.clouds.gcp import catalog, prices

# us-central1 prices from the reference (§6) and the whole-VM list prices it quotes ([S21]).
GPU_PRICE = {"nvidia-tesla-t4": (0.35, 0.14), "nvidia-tesla-p4": (0.60, 0.24), "nvidia-tesla-p100": (1.46, 0.584),
             "nvidia-tesla-v100": (2.48, 0.992), "nvidia-l4": (0.56004, 0.2231), "nvidia-tesla-a100": (2.93391, 1.1472)}
VM_LIST_PRICE = {"g2-standard-4": 0.708, "g2-standard-8": 0.854, "g2-standard-12": 1.000, "g2-standard-16": 1.146,
                 "g2-standard-24": 2.000, "g2-standard-48": 4.000, "g2-standard-96": 7.999, "a2-highgpu-1g": 3.673,
                 "a2-highgpu-2g": 7.347, "a2-highgpu-4g": 14.694, "a2-highgpu-8g": 29.387, "a2-megagpu-16g": 55.74}


def gcp_stack(**sections) -> Stack:
    sections.setdefault("gcp", {})
    sections["gcp"].setdefault("project", "ml-demo-123456")
    return Stack(name="cost", target="gcp", **sections)


def test_every_price_names_its_source_and_date():
    data = catalog.data()
    for region, table in data["prices"].items():
        for kind in ("gpu", "host", "vm"):
            for name, row in table.get(kind, {}).items():
                assert row["source"] in data["sources"] and row.get("date"), (region, kind, name)
                assert all(row.get(m, 1) > 0 for m in ("on_demand", "spot")), "unknown prices are absent, not 0"
        for family, rates in table.get("rates", {}).items():
            assert rates["source"] in data["sources"] and rates["date"] and rates["from"], family


def test_gpu_prices_are_the_reference_values():
    table = catalog.data()["prices"]["us-central1"]["gpu"]
    for gpu, (on_demand, spot) in GPU_PRICE.items():
        assert (table[gpu]["on_demand"], table[gpu]["spot"]) == (on_demand, spot)
    # Flagged in the reference as wrong or unverified: unknown, not guessed.
    assert "on_demand" not in table["nvidia-h100-80gb"]
    for unknown in ("nvidia-a100-80gb", "nvidia-h100-mega-80gb", "nvidia-h200-141gb", "nvidia-b200"):
        assert unknown not in table


@pytest.mark.parametrize("machine", sorted(VM_LIST_PRICE))
def test_host_plus_gpu_matches_the_list_price(machine):
    """Two sources agree: SkyPilot's host + GPU rows and the third-party whole-VM list price."""
    m = catalog.bundled_machine_types()[machine]
    price = prices.vm_price(m, catalog.gpus()[m.gpu], m.gpus, "us-central1", spot=False)
    assert price.usd_per_hour == pytest.approx(VM_LIST_PRICE[machine], abs=0.01)


def test_n1_host_rates_reproduce_the_source_rows():
    # Rows of the SkyPilot catalog that the rates were not derived from.
    for name, on_demand, spot in [("n1-standard-64", 3.03998, 0.7704), ("n1-standard-96", 4.55998, 1.1556),
                                  ("n1-highmem-64", 3.7857, 0.95379)]:
        shape = catalog.n1_shape(name)
        assert prices.vm_price(shape, None, 0, "us-central1", False).usd_per_hour == pytest.approx(on_demand, abs=0.001)
        assert prices.vm_price(shape, None, 0, "us-central1", True).usd_per_hour == pytest.approx(spot, abs=0.001)


def test_gpu_rows_cover_the_catalog_and_filter():
    rows = prices.gpu_rows()
    assert {r.gpu for r in rows} == set(catalog.gpus())
    t4 = [r for r in rows if r.alias == "t4"]
    assert [r.count for r in t4] == [1, 2, 4] and t4[0].machine_type == "n1-standard-4"
    assert t4[0].vm_usd_per_hour == pytest.approx(0.54) and t4[0].host_limit == "up to 48 vCPUs, 312 GB"
    # Reference §6: the T4 alone is $0.35/h on-demand, $0.14 Spot, whatever the count; the VM adds its host.
    assert [(r.gpu_usd_per_hour, r.spot_gpu_usd_per_hour) for r in t4] == [(0.35, 0.14)] * 3
    assert t4[1].vm_usd_per_hour == pytest.approx(0.54 + 0.35) and t4[0].spot_vm_usd_per_hour == pytest.approx(0.188, abs=0.001)
    h100 = {r.count: r for r in rows if r.alias == "h100"}
    assert h100[1].on_demand is False and h100[1].vm_usd_per_hour is None
    assert h100[8].vm_usd_per_hour == pytest.approx(88.494)
    assert h100[8].gpu_usd_per_hour is None and h100[8].spot_gpu_usd_per_hour == 2.253  # §6: on-demand per GPU unverified
    json.dumps([r.as_dict() for r in rows])  # `mlinfra gpus --json`

    in_region = prices.gpu_rows(region="europe-west4")
    aliases = {r.alias for r in in_region}
    assert aliases >= {"t4", "l4", "v100", "h200"} and "b200" not in aliases  # B200 has no europe-west4 zone
    assert all(z.startswith("europe-west4-") for r in in_region if r.zones for z in r.zones)
    assert all(r.vm_usd_per_hour is None and r.gpu_usd_per_hour is None for r in in_region)  # us-central1 only
    assert {r.price_region for r in in_region} == {"europe-west4"}
    assert [r.alias for r in prices.gpu_rows(gpu="L4")] == ["l4"] * 4
    with pytest.raises(catalog.UnknownGpu):
        prices.gpu_rows(gpu="h1000")


def test_seed_stack_cost():
    cost = prices.estimate_cost(gcp_stack(compute={"gpu": "t4", "machine_type": "n1-standard-4"}))
    # n1-standard-4 (4 × 0.031611 + 15 × 0.004237) + one T4 (0.35)
    assert cost.on_demand_usd_per_hour == pytest.approx(0.54, abs=0.001)
    assert cost.spot_usd_per_hour == pytest.approx(0.188, abs=0.001)
    assert cost.usd_per_hour == cost.on_demand_usd_per_hour and cost.usd_per_month == pytest.approx(0.54 * 730, abs=1)
    assert cost.missing == () and cost.sources and cost.notes


def test_cost_scales_with_nodes_and_follows_spot():
    one = prices.estimate_cost(gcp_stack(compute={"gpu": "l4", "spot": True}))
    many = prices.estimate_cost(gcp_stack(compute={"gpu": "l4", "spot": True, "replicas": 3}))
    assert many.spot_usd_per_hour == pytest.approx(3 * one.spot_usd_per_hour)
    assert many.usd_per_hour == many.spot_usd_per_hour and len(many.nodes) == 3


def test_unknown_prices_make_the_total_unknown_not_zero():
    outside = prices.estimate_cost(gcp_stack(compute={"gpu": "t4"}, gcp={"regions": ["us-central1", "europe-west4"]}))
    assert outside.on_demand_usd_per_hour is None and outside.usd_per_month is None
    assert any("europe-west4" in reason for reason in outside.missing)
    h200 = prices.estimate_cost(gcp_stack(compute={"gpu": "h200", "gpu_count": 8, "spot": True}))
    assert h200.spot_usd_per_hour is None and h200.missing
    assert Stack(name="local").cost() is None  # the local target has no price: not $0 (ops.cost says why)
