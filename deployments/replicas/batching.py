"""What the batching replicas (embeddings, rerank) share: calls grouped, each group in one forward
pass, and the pass's flat output split back per call, with one call's error kept to that call."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np

C = TypeVar("C")  # a call
I = TypeVar("I")  # noqa: E741  # one item of a call (a text, an image, a pair)
R = TypeVar("R")  # one call's result

PerCall = tuple[np.ndarray, int]  # one call's rows of the pass's output, and the tokens they used


def run_grouped(
    calls: Sequence[C], key: Callable[[C], Hashable], run: Callable[[list[C]], list[R]]
) -> list[R | Exception]:
    """Each call's result or error, in order: ``run`` once per group of calls with one ``key``.

    A group whose run fails is run again one call at a time, so one bad input (a corrupt image sent to
    the replica directly, an unknown prompt) fails its own request and not the good ones batched with it.
    """
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, call in enumerate(calls):
        groups[key(call)].append(index)
    results: list[R | Exception] = [ValueError("not computed")] * len(calls)
    for members in groups.values():
        try:
            for i, result in zip(members, run([calls[i] for i in members]), strict=True):
                results[i] = result
        except Exception as e:
            if len(members) == 1:
                results[members[0]] = e
                continue
            for i in members:
                results[i] = run_grouped([calls[i]], key, run)[0]
    return results


def in_one_pass(
    calls: Sequence[C], items: Callable[[C], Sequence[I]], run: Callable[[list[I]], tuple[np.ndarray, list[int]]]
) -> list[PerCall]:
    """Every call's items in one ``run`` (rows out, tokens per item), split back per call."""
    per_call = [items(call) for call in calls]
    rows, tokens = run([item for group in per_call for item in group])
    results, start = [], 0
    for group in per_call:
        end = start + len(group)
        results.append((rows[start:end], sum(tokens[start:end])))
        start = end
    return results
