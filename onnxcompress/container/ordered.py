"""Tensors encoded or decoded on a few threads, handed back in their order.

The C coders, zlib and LZMA release the GIL, and one entropy-coded stream is sequential, so the
cores work on different tensors. At most `threads` items are worked on ahead of the caller:
memory stays near one tensor per thread (at VGG-19 scale all of them at once are 575 MB more).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_order(items: Iterable[Item], work: Callable[[Item], Result], threads: int
             ) -> Iterator[tuple[Item, Result]]:
    """(item, work(item)) in the items' order, `threads` at once, at most that many ahead of
    the caller; an item's exception is raised when its turn comes."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(work, item)))
            if len(pending) > threads:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
