"""How the batching replicas (embeddings, rerank) run a batch of calls: grouped, one pass per group,
split back per call, and a failing call failing alone. Plain functions: no Ray, no model."""

from __future__ import annotations

import numpy as np

from deployments.replicas.batching import in_one_pass, run_grouped


def test_each_group_runs_once_and_a_bad_call_fails_alone():
    """Calls are (group, value); a pass fails if any value is negative, as a group holding one corrupt
    input fails. The failing group runs again call by call: its good calls succeed, the bad one keeps
    its own error, and the other group is untouched."""
    passes: list[list[tuple[str, int]]] = []

    def run(group: list[tuple[str, int]]) -> list[int]:
        passes.append(group)
        if bad := [value for _, value in group if value < 0]:
            raise ValueError(f"negative {bad[0]}")
        return [value * 10 for _, value in group]

    calls = [("a", 1), ("b", 2), ("a", -3), ("a", 4), ("b", 5)]
    results = run_grouped(calls, lambda call: call[0], run)
    assert results[:2] == [10, 20] and results[3:] == [40, 50]
    assert isinstance(results[2], ValueError) and str(results[2]) == "negative -3"
    assert passes == [
        [("a", 1), ("a", -3), ("a", 4)],  # group a together: fails
        [("a", 1)],  # then each of its calls alone
        [("a", -3)],
        [("a", 4)],
        [("b", 2), ("b", 5)],  # group b together, once
    ]


def test_one_pass_is_split_back_per_call_with_its_tokens():
    calls = [["x", "y"], ["z"], [], ["u", "v", "w"]]
    seen: list[list[str]] = []

    def run(items: list[str]) -> tuple[np.ndarray, list[int]]:
        seen.append(items)
        return np.arange(len(items) * 2).reshape(len(items), 2), [len(item) + i for i, item in enumerate(items)]

    results = in_one_pass(calls, lambda call: call, run)
    assert seen == [["x", "y", "z", "u", "v", "w"]]  # one pass for all
    assert [rows.tolist() for rows, _ in results] == [[[0, 1], [2, 3]], [[4, 5]], [], [[6, 7], [8, 9], [10, 11]]]
    assert [tokens for _, tokens in results] == [1 + 2, 3, 0, 4 + 5 + 6]
