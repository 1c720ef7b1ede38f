"""The lifecycle of a job, as data: its states and the one table of legal moves."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in progress"
    READY = "ready"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.READY, JobStatus.FAILED, JobStatus.INTERRUPTED})

# A status only ever moves forward: clients poll it and must never see it go back.
# A job whose worker died stays "in progress" with no lease owner until another
# worker claims it; taking a lease is not a change of status (see jobs/store.py).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.NEW: frozenset({JobStatus.IN_PROGRESS, JobStatus.FAILED, JobStatus.INTERRUPTED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.READY, JobStatus.FAILED, JobStatus.INTERRUPTED}),
    JobStatus.READY: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.INTERRUPTED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a job cannot go from {current.value!r} to {target.value!r}")
        self.current = current
        self.target = target


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is in the table."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)


def sources_of(target: JobStatus) -> tuple[JobStatus, ...]:
    """The states from which ``target`` may be reached; used in conditional UPDATEs."""
    return tuple(s for s, targets in TRANSITIONS.items() if target in targets)
