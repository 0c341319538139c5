"""Where a spec runs (warmd.cluster.Placement): locally, or on the cluster through the `cluster` provider;
`placement: cluster` without a cluster is a rejected file, never a quiet local model."""
from __future__ import annotations

from pathlib import Path

import pytest

from warmd.catalog import Catalog
from warmd.cluster import Placement
from warmd.config import load_settings
from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.providers import PROVIDERS

SPEC = ("provider: torch\ndevice: cuda\nsource: {path: w.safetensors}\noptions: {factory: 'm.py:M'}\n"
        "max_in_flight: 2\ninputs: [{name: x, dtype: FP32, shape: [-1, 4]}]\n")


def _catalog(specs: Path, place: Placement) -> Catalog:
    (specs / "w.safetensors").write_bytes(b"")
    (specs / "here.yaml").write_text(SPEC)
    (specs / "there.yaml").write_text(SPEC + "placement: cluster\n")
    (specs / "mine.yaml").write_text(SPEC + "placement: local\n")
    catalog = Catalog(specs, [specs], dict(PROVIDERS), EventBus(), place=place)
    catalog.rescan()
    return catalog


def test_a_cluster_placed_spec_is_served_through_the_cluster_provider(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, Placement("10.1.2.3:6379"))
    there, here = catalog.require("there"), catalog.require("here")
    assert (there.provider, there.source.kind, there.source.ref, there.source.model) == \
        ("cluster", "cluster", "10.1.2.3:6379", "there")
    assert there.device == "cpu"          # no local device: a GPU on the cluster is the replica's business
    assert there.inputs == here.inputs and there.max_in_flight == 2     # checked and admitted here as ever
    assert (here.provider, here.source.kind, here.device) == ("torch", "path", "cuda")
    assert not catalog.rejected()


def test_placement_cluster_in_the_config_places_every_spec_but_the_local_ones(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, Placement("10.1.2.3:6379", default="cluster"))
    assert {s.name: s.provider for s in catalog.specs()} == {"here": "cluster", "there": "cluster", "mine": "torch"}


def test_placement_cluster_without_a_cluster_rejects_the_file(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, Placement())
    assert sorted(s.name for s in catalog.specs()) == ["here", "mine"]
    [err] = catalog.rejected()
    assert err.file.name == "there.yaml" and err.code is Code.UNSUPPORTED_PROVIDER and err.field == "placement"
    assert "`cluster: ADDRESS`" in err.message


def test_the_settings_refuse_placement_cluster_without_a_cluster(tmp_path: Path) -> None:
    with pytest.raises(WarmdError) as info:
        load_settings(env={}, placement="cluster")
    assert info.value.code is Code.INVALID_ARGUMENT and "cluster: ADDRESS" in info.value.message
    with pytest.raises(WarmdError) as info:
        load_settings(env={}, placement="remote")
    assert "placement must be local or cluster" in info.value.message
    assert load_settings(env={"WARMD_CLUSTER": "ray://head:10001", "WARMD_PLACEMENT": "cluster"}).placement == "cluster"


def test_a_cluster_placed_spec_has_no_local_files_to_show_fetch_or_remove(tmp_path: Path) -> None:
    from warmd.store import Store
    from warmd.store.sources import handler

    catalog = _catalog(tmp_path, Placement("10.1.2.3:6379"))
    there = catalog.require("there")
    store = Store(tmp_path / "data", EventBus())
    assert store.state(there).state == "on the cluster" and store.local(there) == tmp_path
    assert there.source.describe() == "cluster:10.1.2.3:6379/there" and not handler(there.source).downloadable
    with pytest.raises(WarmdError) as info:
        handler(there.source).check_removable(there, [])
    assert info.value.code is Code.INVALID_ARGUMENT and "cluster's nodes" in info.value.message


def test_warm_ps_says_where_the_registry_puts_a_model_and_when_it_did_not_answer(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from warmd.cluster import front

    there = _catalog(tmp_path, Placement("10.1.2.3:6379")).require("there")
    provider = front.ClusterProvider(there, tmp_path, "cpu")
    entry = {"node": "0123456789abcdef", "models": ["there"]}
    for snapshot, shown in [({"r1": entry, "r2": {**entry, "models": []}}, "replica r1 (node 01234567)"),
                            ({"r2": {**entry, "models": []}}, "cluster (no replica holds it now)"),
                            (None, "cluster (its registry did not answer; `warmd cluster status` asks again)")]:
        monkeypatch.setattr(front, "_snapshot", (time.monotonic(), snapshot))    # fresh: no Ray asked
        assert provider.location() == shown
