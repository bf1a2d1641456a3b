"""A pool replica's rules, without Ray: what to unload to make room for a load, how big a model is
estimated to be in memory, and what ``/v1/models`` says of a pooled model from its pool's records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from candle.catalog import load_catalog
from candle.download.records import FileProgressRecord, ModelProgress, RepoProgressRecord
from candle.engines.memory import estimated_bytes, load_itemsize
from deployments.model_status import pooled_status
from deployments.pool_records import ModelOnReplica, ReplicaRecord
from deployments.replicas.pool import Held, NoRoom, evictions

held_models = st.lists(
    st.builds(Held, name=st.text("abcdef", min_size=1, max_size=3), size=st.integers(0, 1000), busy=st.booleans()),
    max_size=6,
    unique_by=lambda h: h.name,
)


@given(held_models, st.integers(0, 1000), st.integers(1, 5), st.none() | st.integers(0, 3000))
def test_a_load_unloads_the_fewest_least_recently_used_idle_ones_first(held, size, max_models, budget):
    if budget is not None and size > budget:
        with pytest.raises(NoRoom, match="more than a replica of its pool books"):
            evictions(held, size, max_models, budget)
        return
    chosen = evictions(held, size, max_models, budget)

    order = [h.name for h in held if not h.busy] + [h.name for h in held if h.busy]
    assert chosen == order[: len(chosen)]  # idle before busy, least recently used first

    def room(gone: list[str]) -> bool:
        kept = [h for h in held if h.name not in gone]
        return len(kept) < max_models and (budget is None or sum(h.size for h in kept) + size <= budget)

    assert room(chosen)
    assert not chosen or not room(chosen[:-1])  # not one more than needed


def test_eviction_examples():
    lru = [Held("a", 100, busy=True), Held("b", 100, busy=False), Held("c", 300, busy=False)]
    assert evictions(lru, 50, max_models=3, budget=None) == ["b"]  # at the count: the idle LRU goes
    assert evictions(lru, 50, max_models=4, budget=550) == []
    assert evictions(lru, 200, max_models=4, budget=500) == ["b", "c"]
    assert evictions(lru, 450, max_models=4, budget=500) == ["b", "c", "a"]  # a busy one last
    with pytest.raises(NoRoom, match=r"it needs about 0.00 GiB, more than a replica of its pool books \(0.00\)"):
        evictions(lru, 501, max_models=4, budget=500)


def test_a_models_size_is_its_weights_at_the_dtype_it_loads_in(tmp_path: Path):
    save_file(
        {"w": torch.zeros(10, 4, dtype=torch.float16), "ids": torch.zeros(6, dtype=torch.int64)},
        tmp_path / "model.safetensors",
    )
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 10_000)  # a loader takes the safetensors
    text = tmp_path / "text_encoder"
    text.mkdir()
    (text / "pytorch_model.bin").write_bytes(b"x" * 123)  # no safetensors here: counted as stored
    (tmp_path / "config.json").write_text("{}")

    assert estimated_bytes(tmp_path, itemsize=4) == 40 * 4 + 6 * 8 + 123
    assert estimated_bytes(tmp_path, itemsize=2) == 40 * 2 + 6 * 8 + 123


def test_the_load_dtype_is_candles_unless_the_entry_pins_one():
    plain = load_catalog({"models": [{"name": "a", "capability": "text-embedding", "repo_id": "o/a"}]}).models[0]
    assert load_itemsize(plain) == 4  # fp32 on a CPU replica
    pinned = plain.model_copy(update={"engine_args": {"model_kwargs": {"dtype": "float16"}}})
    assert load_itemsize(pinned) == 2


SPEC = load_catalog(
    {"pools": {"p": {}}, "models": [{"name": "m", "capability": "text-embedding", "repo_id": "o/m", "pool": "p"}]}
).models[0]


def record(replica: str, **models: ModelOnReplica) -> ReplicaRecord:
    return ReplicaRecord(replica, f"node-{replica}", 0.0, models)


def test_a_pooled_model_is_ready_where_a_replica_holds_it():
    status = pooled_status(
        SPEC, [record("r1", m=ModelOnReplica("idle", 2)), record("r2", m=ModelOnReplica("ready", 1))], {}
    )
    assert status.state == "ready"
    assert status.as_dict()["replicas"] == [
        {"replica_id": "r1", "node_id": "node-r1", "state": "idle", "loads": 2},
        {"replica_id": "r2", "node_id": "node-r2", "state": "ready", "loads": 1},
    ]


def test_a_pooled_model_loading_shows_its_download():
    weights = FileProgressRecord("model.safetensors", "downloading", 5, 10, rate=1.0, source="hub")
    fetching = RepoProgressRecord("o/m", "main", None, "downloading", None, (weights,))
    status = pooled_status(SPEC, [record("r1", m=ModelOnReplica("loading"))], {"node-r1": [fetching]})
    assert (status.state, status.progress) == ("downloading", ModelProgress((("node-r1", fetching),)))
    assert pooled_status(SPEC, [record("r1", m=ModelOnReplica("loading"))], {}).state == "loading"


def test_a_pooled_model_loaded_nowhere_is_idle_and_a_failed_load_says_why():
    idle = pooled_status(SPEC, [record("r1", other=ModelOnReplica("ready", 1))], {})
    assert (idle.state, idle.reason, idle.replicas) == (
        "idle",
        "loaded on no replica of pool 'p'; a request loads it",
        (),
    )
    failed = pooled_status(SPEC, [record("r1", m=ModelOnReplica("failed", 0, "OSError: no weights"))], {})
    assert (failed.state, failed.reason) == ("failed", "OSError: no weights")
