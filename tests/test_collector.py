"""The collector's pause restores what it found, however pauses nest or overlap: a daemon left without
its cyclic collector would keep every reference cycle it ever made."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from provider.collector import collector_paused, without_collector


@pytest.fixture(autouse=True)
def collector_running() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_a_pause_ends_with_the_collector_running_again() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_inside_a_pause_leaves_it_paused_and_an_exception_still_ends_it() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()  # the inner pause found it paused: it leaves it so
        raise RuntimeError("a refused body")
    assert gc.isenabled()


def test_a_pause_where_the_collector_was_off_leaves_it_off() -> None:
    gc.disable()
    without_collector(lambda: None)()
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads_end_with_the_collector_running() -> None:
    """A pass's store work in its thread, a request parsed on the loop meanwhile: they end in either order."""
    entered, release = threading.Event(), threading.Event()

    def store_work() -> None:
        with collector_paused():
            entered.set()
            release.wait(5)

    for request_ends_first in (True, False):
        worker = threading.Thread(target=store_work)
        worker.start()
        assert entered.wait(5)
        pause = collector_paused()
        pause.__enter__()
        if request_ends_first:
            pause.__exit__(None, None, None)
            release.set()
            worker.join()
        else:
            release.set()
            worker.join()
            pause.__exit__(None, None, None)
        assert gc.isenabled()
        entered.clear()
        release.clear()
