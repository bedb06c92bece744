"""tags() blocks and @tagged declarations (no broker needed)."""

from __future__ import annotations

import asyncio
import functools
import pickle
import threading

import pytest

from slotkeeper import InvalidArgument, InvalidType, tagged, tags
from slotkeeper.tags import current_tags, declared_tags, task_tags
from tests.support.classic import say_hi, work


def test_blocks_nest_and_accumulate() -> None:
    assert current_tags() == frozenset()
    with tags("group C") as now:
        assert now == {"group C"}
        with tags("group B", "x"):
            with tags("group A"):
                assert current_tags() == {"group A", "group B", "group C", "x"}
            assert current_tags() == {"group B", "group C", "x"}
        assert current_tags() == {"group C"}
    assert current_tags() == frozenset()


def test_block_is_undone_by_an_exception() -> None:
    with pytest.raises(ValueError):
        with tags("a"):
            raise ValueError
    assert current_tags() == frozenset()


def test_one_tags_object_reused_and_shared_between_threads() -> None:
    block = tags("shared")
    seen: list[frozenset[str]] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        with block:
            barrier.wait()
            with block:
                seen.append(current_tags())
            barrier.wait()
        seen.append(current_tags())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen.count(frozenset({"shared"})) == 4 and seen.count(frozenset()) == 4


def test_threads_do_not_see_each_others_blocks() -> None:
    inside = threading.Event()
    leave = threading.Event()
    other: list[frozenset[str]] = []

    def holder() -> None:
        with tags("mine"):
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(10)
    other.append(current_tags())
    leave.set()
    t.join()
    assert other == [frozenset()]


def test_asyncio_tasks_have_their_own_blocks() -> None:
    async def one(tag: str) -> frozenset[str]:
        with tags(tag):
            await asyncio.sleep(0.01)
            return current_tags()

    async def main() -> list[frozenset[str]]:
        return list(await asyncio.gather(one("a"), one("b")))

    assert asyncio.run(main()) == [{"a"}, {"b"}]


def test_tags_as_decorator_sync_and_async() -> None:
    @tags("submitter")
    def f() -> frozenset[str]:
        return current_tags()

    @tags("asubmitter")
    async def g() -> frozenset[str]:
        return current_tags()

    assert f() == {"submitter"}
    assert asyncio.run(g()) == {"asubmitter"}
    assert current_tags() == frozenset()


def test_tagged_declares_and_stacks_and_still_pickles() -> None:
    assert declared_tags(say_hi) == {"print"}
    assert pickle.loads(pickle.dumps(say_hi)) is say_hi  # the function itself, by reference

    @tagged("a")
    @tagged("b", "c")
    def f() -> None: ...

    assert declared_tags(f) == {"a", "b", "c"}
    assert declared_tags(functools.partial(f, 1)) == {"a", "b", "c"}
    assert declared_tags(work) == frozenset()


def test_task_tags_are_declared_plus_active() -> None:
    with tags("example"):
        assert task_tags(say_hi) == {"example", "print"}
    assert task_tags(say_hi) == {"print"}


@pytest.mark.parametrize("bad", ["", " lead", "trail ", "tab\tinside", "x" * 201])
def test_bad_tags_are_value_errors(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        tags(bad)
    with pytest.raises(ValueError):
        tagged(bad)


def test_wrong_types() -> None:
    with pytest.raises(InvalidType):
        tags(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidType):
        tagged("x")(42)  # type: ignore[type-var]
