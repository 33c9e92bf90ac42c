"""Group commit when a submitter is gone: the others in its batch still get their results.

aiosmtpd cancels an LMTP session's handler when its client disconnects, and shutdown cancels
sessions: the future that session awaited is then cancelled while its batch is being written.
"""

from __future__ import annotations

import asyncio

import pytest

from cgpop.groupcommit import GroupCommit


@pytest.mark.parametrize("fails", [False, True])
def test_a_cancelled_submitter_does_not_strand_its_batch(fails: bool) -> None:
    def write(items: list[int]) -> list[int]:
        if fails:
            raise OSError("disk full")
        return [i * 10 for i in items]

    async def scenario() -> None:
        release = asyncio.Event()

        async def held_write(items: list[int]) -> list[int]:
            await release.wait()  # the writer thread is busy with this batch
            return write(items)

        commit: GroupCommit[int, int] = GroupCommit(held_write)
        first, second = commit.submit(1), commit.submit(2)
        first.cancel()  # its LMTP client went away while the batch was being written
        release.set()
        if fails:
            with pytest.raises(OSError, match="disk full"):
                await asyncio.wait_for(second, 10)
        else:
            assert await asyncio.wait_for(second, 10) == 20
        # The batch loop survived: a later item is written too.
        third = commit.submit(3)
        if not fails:
            assert await asyncio.wait_for(third, 10) == 30
        else:
            with pytest.raises(OSError):
                await asyncio.wait_for(third, 10)

    asyncio.run(scenario())


def test_linger_gathers_items_until_hurried() -> None:
    """A lingering batch (the \\Seen group commit) takes every item submitted while it waits,
    and hurry() writes it at once."""
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    async def scenario() -> None:
        commit: GroupCommit[int, int] = GroupCommit(write, linger=3600.0)
        futures = [commit.submit(1), commit.submit(2)]
        await asyncio.sleep(0)
        futures.append(commit.submit(3))  # while the batch lingers
        await asyncio.sleep(0)
        assert batches == []
        commit.hurry()
        assert await asyncio.wait_for(asyncio.gather(*futures), 10) == [1, 2, 3]
        assert batches == [[1, 2, 3]]
        await commit.drain()

    asyncio.run(scenario())


def test_added_items_join_batches_without_futures() -> None:
    """`add` (no one waits, as for \\Seen): written in the same batches as submitted items,
    and a failed batch still answers its submitters and leaves the loop running."""
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        batches.append(items)
        if 0 in items:
            raise OSError("disk full")
        return items

    async def scenario() -> None:
        commit: GroupCommit[int, int] = GroupCommit(write)
        commit.add(1)
        waited = commit.submit(2)
        commit.add(3)
        assert await asyncio.wait_for(waited, 10) == 2
        commit.add(0)
        failed = commit.submit(4)
        with pytest.raises(OSError, match="disk full"):
            await asyncio.wait_for(failed, 10)
        commit.add(5)
        await commit.drain()

    asyncio.run(scenario())
    assert batches == [[1, 2, 3], [0, 4], [5]]
