"""The committer: commits what the commit tracker says is committable, one commit at a time.

A settled batch asks for a commit (:meth:`Committer.request`); the committer task
(:meth:`Committer.run`) then commits every candidate of the tracker through the engine's commit
(fenced by member id and generation). A fenced commit is never retried (the loss callback drops
those partitions); a failed one is tried again after :data:`COMMIT_RETRY_SECONDS`. Revoke and
shutdown call :meth:`Committer.commit_ready` directly for their final commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio

from capgroup.errors import CommitFailedError, CommitFencedError
from capgroup.log import get_logger
from capgroup.membership.model import Generation
from capgroup.runtime.offsets import CommitTracker
from capgroup.runtime.partition import partition_names
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition

__all__ = ["COMMIT_RETRY_SECONDS", "CommitOffsets", "Committer"]

_log = get_logger("consumer")

#: Wait before a commit that failed (not fenced) is attempted again.
COMMIT_RETRY_SECONDS = 1.0

#: Commits offsets under the current generation (``MembershipEngine.commit``) and returns the
#: generation the commit was made under (None: unknown); raises
#: :class:`~capgroup.errors.CommitFencedError` or :class:`~capgroup.errors.CommitFailedError`.
CommitOffsets = Callable[[Mapping[TopicPartition, int]], Awaitable[Generation | None]]


class Committer:
    """Commits the tracker's candidates through ``commit``; create inside the event loop.

    ``offsets_committed`` names the generation ``commit`` returns, the one the commit was
    really made under (it may wait out a rebalance); ``generation_id`` is the fallback when
    ``commit`` returns None.
    """

    def __init__(
        self,
        tracker: CommitTracker,
        counters: Counters,
        commit: CommitOffsets,
        generation_id: Callable[[], int],
        *,
        retry_seconds: float = COMMIT_RETRY_SECONDS,
    ) -> None:
        self._tracker = tracker
        self._counters = counters
        self._commit = commit
        self._generation_id = generation_id
        self._retry_seconds = retry_seconds
        self._wanted = anyio.Event()
        self._lock = anyio.Lock()

    def request(self) -> None:
        """Ask the committer task for a commit (something became committable)."""
        self._wanted.set()

    async def run(self) -> None:
        """Commit whenever asked, until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            if not await self.commit_ready():
                await anyio.sleep(self._retry_seconds)
                self._wanted.set()

    async def commit_ready(self) -> bool:
        """Commit every committable offset; False when it should be tried again later.

        Serialised, so a later commit of a partition never lands before an earlier one.
        """
        async with self._lock:
            candidates = self._tracker.candidates()
            if not candidates:
                return True
            offsets = {c.tp: c.offset for c in candidates}
            try:
                made_under = await self._commit(offsets)
            except CommitFencedError as exc:
                # Lost, never retried: the loss callback drops these partitions.
                self._counters.commits_fenced += 1
                _log.warning(
                    "commit_fenced", reason=exc.reason, partitions=partition_names(offsets)
                )
                return True
            except CommitFailedError as exc:
                self._counters.commit_failures += 1
                _log.warning("commit_failed", error=str(exc), partitions=partition_names(offsets))
                return False
            for c in candidates:
                self._tracker.mark_committed(c.tp, c.epoch, c.offset)
            self._counters.commits += 1
            _log.info(
                "offsets_committed",
                generation=self._generation_id()
                if made_under is None
                else made_under.generation_id,
                offsets={f"{tp.topic}-{tp.partition}": o for tp, o in sorted(offsets.items())},
            )
            return True
