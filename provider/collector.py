"""The cyclic garbage collector, paused while the daemon builds many short-lived objects and no cycles.

Python's collector runs a generation-0 collection every 700 new containers and, every hundredth
of those, one that walks every object the daemon holds. Parsing Core's 7.5 MB verify body or deciding
10,000 jobs builds hundreds of thousands of tuples, rows and records: reference counting frees all of
them, none forms a cycle, and the collections they trigger cost more than the work itself (measured:
deciding the 5,000 jobs of a pass that sacct answered, 57 ms with the collector and 31 ms without).

The pause restores what it found, so pauses nest and may overlap (a request parsed while a pass's
store work runs in its thread): whoever found the collector running turns it back on.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def collector_paused() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def without_collector(work: Callable[P, R]) -> Callable[P, R]:
    """``work`` (synchronous, no cycles made) runs with the collector paused."""

    @functools.wraps(work)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        with collector_paused():
            return work(*args, **kwargs)

    return paused
