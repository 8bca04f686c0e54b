"""agent.stepping: a coroutine's first step runs at once; the rest only if it waits."""

from __future__ import annotations

import asyncio

import pytest

from agent.stepping import Rest, step


async def test_a_coroutine_that_does_not_wait_finishes_in_the_call() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    assert step(quick()) is None
    assert done == [1]


async def test_one_that_waits_is_finished_by_awaiting_the_rest() -> None:
    seen: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def slow() -> None:
        seen.append("first step")
        seen.append(await gate)
        await asyncio.sleep(0)
        seen.append("done")

    rest = step(slow())
    assert rest is not None
    assert seen == ["first step"]
    finishing = asyncio.create_task(_finish(rest))
    await asyncio.sleep(0)
    gate.set_result("resumed")
    await finishing
    assert seen == ["first step", "resumed", "done"]


async def _finish(rest: Rest) -> None:
    await rest


async def test_cancelling_the_task_cancels_the_coroutine_inside() -> None:
    cleaned: list[str] = []

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally ran")

    rest = step(waits_forever())
    assert rest is not None
    task = asyncio.create_task(_finish(rest))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]


async def test_an_error_in_the_first_step_reaches_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("at once")

    with pytest.raises(ValueError, match="at once"):
        step(broken())
