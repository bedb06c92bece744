"""Task tags, as in Prefect 0.x task throttling.

A task's tags are those declared on its function with ``@tagged(...)`` plus those of every
``with tags(...):`` block active when it is *submitted*. Blocks nest and accumulate; they live in a
:mod:`contextvars` variable, so threads and asyncio tasks each see their own blocks.

>>> @tagged("print")
... def say_hi(name): ...
>>> with tags("example"):
...     with tags("loud"):
...         current_tags()
frozenset({'example', 'loud'})
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from slotkeeper.broker.errors import InvalidArgument, InvalidType

F = TypeVar("F", bound=Callable[..., Any])

TAGS_ATTR = "__slotkeeper_tags__"
MAX_TAG = 200

# A stack of cumulative tag sets, one per open block; per context (thread / asyncio task).
_stack: contextvars.ContextVar[tuple[frozenset[str], ...]] = contextvars.ContextVar(
    "slotkeeper_tags", default=()
)


def check_tag(tag: object) -> str:
    """A tag is a non-empty str of at most 200 printable characters without surrounding spaces
    (a throttled tag becomes, or becomes part of, a limit name)."""
    if not isinstance(tag, str):
        raise InvalidType(f"a tag must be a str, not {type(tag).__name__}")
    if not tag or len(tag) > MAX_TAG:
        raise InvalidArgument(f"tag {tag!r}: must be 1-{MAX_TAG} characters")
    if tag != tag.strip() or not tag.isprintable():
        raise InvalidArgument(f"tag {tag!r}: no leading/trailing spaces or unprintable characters")
    return tag


def check_tags(tag_list: Iterable[object]) -> frozenset[str]:
    if isinstance(tag_list, str):
        return frozenset((check_tag(tag_list),))
    return frozenset(check_tag(t) for t in tag_list)


def current_tags() -> frozenset[str]:
    """The tags of every ``tags()`` block active in this context."""
    stack = _stack.get()
    return stack[-1] if stack else frozenset()


def _push(names: frozenset[str]) -> frozenset[str]:
    now = current_tags() | names
    _stack.set((*_stack.get(), now))
    return now


def _pop() -> None:
    stack = _stack.get()
    if stack:
        _stack.set(stack[:-1])


class tags:  # noqa: N801 - reads like Prefect's ``tags`` context manager
    """``with tags("example", "io"):`` — tasks submitted inside carry these tags (nestable).

    Also a decorator: ``@tags("x")`` on a function that *submits* tasks applies the block to
    every call of it."""

    def __init__(self, *names: str) -> None:
        self.names = check_tags(names)

    def __repr__(self) -> str:
        return f"tags({', '.join(map(repr, sorted(self.names)))})"

    def __enter__(self) -> frozenset[str]:
        return _push(self.names)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        _pop()

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                _push(self.names)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _pop()

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _push(self.names)
            try:
                return fn(*args, **kwargs)
            finally:
                _pop()

        return wrapper  # type: ignore[return-value]


def tagged(*names: str) -> Callable[[F], F]:
    """Declare tags on a task function: ``@tagged("print")``.

    The function itself is returned (with the tags recorded on it), so it still pickles by
    reference for process pools and Dask. Stacking ``@tagged`` adds tags."""
    declared = check_tags(names)

    def mark(fn: F) -> F:
        if not callable(fn):
            raise InvalidType("@tagged(...) decorates a callable")
        setattr(fn, TAGS_ATTR, declared_tags(fn) | declared)
        return fn

    return mark


def declared_tags(fn: object) -> frozenset[str]:
    """Tags declared on ``fn`` with ``@tagged`` (looking through functools.partial)."""
    found: frozenset[str] = frozenset()
    seen = 0
    while fn is not None and seen < 10:
        got = getattr(fn, TAGS_ATTR, None)
        if isinstance(got, frozenset):
            found |= got
        fn = getattr(fn, "func", None) if isinstance(fn, functools.partial) else None
        seen += 1
    return found


def task_tags(fn: object) -> frozenset[str]:
    """The tags a task of ``fn`` gets if submitted now: declared ones plus the active blocks."""
    return declared_tags(fn) | current_tags()


__all__ = ["check_tag", "current_tags", "declared_tags", "tagged", "tags", "task_tags"]
