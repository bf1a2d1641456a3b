"""Progress records: one place computes done, total, rate and ETA, for a node's model and across nodes."""

from __future__ import annotations

import pickle

from candle.api.models import progress_json
from candle.download.records import FileProgressRecord, ModelProgress, RepoProgressRecord


def record(state: str, *files: tuple[int, int, float]) -> RepoProgressRecord:
    parts = tuple(FileProgressRecord(f"f{i}", "downloading", d, t, r) for i, (d, t, r) in enumerate(files))
    return RepoProgressRecord("org/model", "main", "a" * 40, state, None, parts)  # type: ignore[arg-type]


def test_a_nodes_record_sums_its_files():
    node = record("downloading", (10, 100, 5.0), (50, 50, 0.0))
    assert (node.bytes_done, node.bytes_total, node.rate, node.eta_s) == (60, 150, 5.0, 18.0)
    assert record("done", (7, 7, 0.0)).eta_s is None  # nothing moving: no ETA, not a division by zero
    assert pickle.loads(pickle.dumps(node)) == node  # crosses Ray as it is


def test_a_model_across_nodes_sums_the_nodes_and_keeps_the_json_of_v1_models():
    model = ModelProgress((("n1", record("downloading", (25, 100, 10.0))), ("n2", record("done", (100, 100, 0.0)))))
    assert model.in_flight and not ModelProgress((("n2", record("done", (1, 1, 0.0))),)).in_flight
    body = progress_json(model)
    assert body | {"nodes": None} == {
        "bytes_done": 125,
        "bytes_total": 200,
        "fraction": 0.625,
        "rate_bytes_per_s": 10.0,
        "eta_s": 7.5,
        "nodes": None,
    }
    assert [(n["node_id"], n["state"], n["bytes_done"]) for n in body["nodes"]] == [
        ("n1", "downloading", 25),
        ("n2", "done", 100),
    ]


def test_each_node_shows_where_its_blobs_come_from_and_how_fast():
    moving = FileProgressRecord("model.safetensors", "downloading", 40, 100, 8.0, "relay", "n1")
    done = FileProgressRecord("config.json", "done", 10, 10, 0.0, "hub")
    node = RepoProgressRecord("org/model", "main", "a" * 40, "downloading", None, (moving, done))
    (entry,) = progress_json(ModelProgress((("n2", node),)))["nodes"]
    assert entry["rate_bytes_per_s"] == 8.0
    assert entry["transfers"] == [
        {
            "path": "model.safetensors",
            "source": "relay",
            "upstream": "n1",
            "bytes_done": 40,
            "bytes_total": 100,
            "rate_bytes_per_s": 8.0,
        }
    ]


def test_each_node_says_how_far_it_is_and_whom_it_copies_from_now():
    """What `candle status --watch` draws and `/v1/models` gives per node: the fraction, the ETA and each
    source in flight once (files from one upstream summed), never a finished file's."""
    relayed = [FileProgressRecord(f"part-{i}", "downloading", 10, 100, 4.0, "relay", "n1") for i in range(2)]
    hub = FileProgressRecord("extra.bin", "downloading", 30, 100, 2.0, "hub")
    done = FileProgressRecord("config.json", "done", 10, 10, 0.0, "peer", "n3")
    node = RepoProgressRecord("org/model", "main", "a" * 40, "downloading", None, (*relayed, hub, done))
    (entry,) = progress_json(ModelProgress((("n2", node),)))["nodes"]
    assert (entry["fraction"], entry["eta_s"]) == (0.1935, 25.0)  # 60 of 310 bytes; 250 left at 10 B/s
    assert entry["sources"] == [
        {"source": "relay", "upstream": "n1", "rate_bytes_per_s": 8.0},
        {"source": "hub", "upstream": None, "rate_bytes_per_s": 2.0},
    ]
    finished = RepoProgressRecord("org/model", "main", "a" * 40, "done", None, ())
    assert (finished.fraction, finished.sources) == (1.0, ())  # nothing to fetch: done, from nowhere
