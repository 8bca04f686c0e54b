"""One status query on the phone for every task asked about in the same event-loop step.

Waiters of many tasks wake on the same poll tick (see ``AndroidRuntime.wait``); the first caller
of a step leads: it yields once so the others woken in that step can join, then asks the phone
about all of them in one SSH command and hands each its answer. A follower whose leader was
cancelled asks again itself, so nobody waits on a query that no one runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class _LeaderGone(Exception):
    """The leader of a batch was cancelled before it asked."""


class Batcher(Generic[T]):
    """Coalesces ``get(key)`` calls made in one event-loop step into one ``query(keys)``.

    Args:
        query: answers for a batch of keys, one per key; its errors reach every caller of the
            batch.
    """

    def __init__(self, query: Callable[[Sequence[str]], Awaitable[dict[str, T]]]) -> None:
        self._query = query
        self._pending: dict[str, list[asyncio.Future[T]]] | None = None

    async def get(self, key: str) -> T:
        """The answer for ``key`` from the batch of this step.

        Raises:
            Whatever ``query`` raised for the batch.
        """
        while True:
            if self._pending is None:
                return await self._lead(key)
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._pending.setdefault(key, []).append(future)
            try:
                return await future
            except _LeaderGone:
                continue

    async def _lead(self, key: str) -> T:
        batch: dict[str, list[asyncio.Future[T]]] = {key: []}
        self._pending = batch
        try:
            await asyncio.sleep(0)  # the others woken in this step join the batch
        except BaseException:
            self._pending = None
            _settle(batch, _LeaderGone())
            raise
        self._pending = None
        try:
            answers = await self._query(sorted(batch))
        except BaseException as err:
            _settle(batch, err if isinstance(err, Exception) else _LeaderGone())
            raise
        for name, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(answers[name])
        return answers[key]


def _settle(batch: dict[str, list[asyncio.Future[T]]], err: Exception) -> None:
    for futures in batch.values():
        for future in futures:
            if not future.done():
                future.set_exception(err)
