"""Progress records: one place computes done, total, rate and ETA, for a node's model and across nodes."""

from __future__ import annotations

import pickle

from candle.contracts import FileProgressRecord, ModelProgress, RepoProgressRecord


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
    body = model.as_json()
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
    (entry,) = ModelProgress((("n2", node),)).as_json()["nodes"]
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
