"""In-process references computed the way a replica computes: Ray starts it with OMP_NUM_THREADS=1.

CPU kernels split their sums by thread, so a reference on this process's threads can differ from the
replica's answer in the last digits, which greedy decoding of a random tiny model can turn into
another token.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def replica_threads() -> Iterator[None]:
    """Run the body on one intra-op thread, as a replica does, and restore the count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
