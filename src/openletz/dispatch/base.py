"""How a job id travels from the API to a worker.

A dispatcher is only a transport. The database row is the truth: a worker's
first act is an atomic claim, so a duplicate or late delivery does nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Dispatcher(ABC):
    #: short name shown in /health
    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    async def enqueue(self, job_id: str) -> None:
        """Hand ``job_id`` to some worker, eventually; never blocks on the worker."""

    @abstractmethod
    async def interrupt(self, job_id: str) -> None:
        """Tell whichever worker runs ``job_id`` to stop it now (best effort: the
        worker also sees the flag in the database at its next heartbeat)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> dict[str, object]:
        return {"name": self.name}
