from __future__ import annotations

import itertools

import pytest

from openletz.jobs.status import (
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    check_transition,
    sources_of,
)

ALL = list(JobStatus)
TERMINAL = {JobStatus.READY, JobStatus.FAILED, JobStatus.INTERRUPTED}

# The lifecycle as written down independently of the module, so that a change to the
# table is a change a test notices. A job whose worker died stays "in progress"
# (with no lease owner) until it is claimed again: there is no way back to "new".
EXPECTED = {
    (JobStatus.NEW, JobStatus.IN_PROGRESS),
    (JobStatus.NEW, JobStatus.FAILED),
    (JobStatus.NEW, JobStatus.INTERRUPTED),
    (JobStatus.IN_PROGRESS, JobStatus.READY),
    (JobStatus.IN_PROGRESS, JobStatus.FAILED),
    (JobStatus.IN_PROGRESS, JobStatus.INTERRUPTED),
}


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(ALL)


def test_table_is_the_documented_lifecycle() -> None:
    table = {(s, t) for s, targets in TRANSITIONS.items() for t in targets}
    assert table == EXPECTED


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(ALL, ALL)),
    ids=lambda s: s.name,
)
def test_every_pair(current: JobStatus, target: JobStatus) -> None:
    if target in TRANSITIONS[current]:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition(current, target)
        assert info.value.current is current
        assert info.value.target is target
        assert current.value in str(info.value)
        assert target.value in str(info.value)


def test_a_status_never_goes_back() -> None:
    # Clients poll the status; one that went back would confuse every one of them.
    # Following the table from any state never comes back to a state already left.
    def reachable(state: JobStatus) -> set[JobStatus]:
        seen: set[JobStatus] = set()
        todo = list(TRANSITIONS[state])
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(TRANSITIONS[s])
        return seen

    for state in ALL:
        assert state not in reachable(state), state
    assert reachable(JobStatus.NEW) == set(ALL) - {JobStatus.NEW}
    assert JobStatus.NEW not in reachable(JobStatus.IN_PROGRESS)


def test_no_state_goes_to_itself() -> None:
    for s in ALL:
        with pytest.raises(IllegalTransition):
            check_transition(s, s)


@pytest.mark.parametrize("state", sorted(TERMINAL), ids=lambda s: s.name)
def test_terminal_states_have_no_way_out(state: JobStatus) -> None:
    assert TRANSITIONS[state] == frozenset()
    for target in ALL:
        with pytest.raises(IllegalTransition):
            check_transition(state, target)


def test_is_terminal() -> None:
    assert {s for s in ALL if s.is_terminal()} == TERMINAL
    assert not JobStatus.NEW.is_terminal()
    assert not JobStatus.IN_PROGRESS.is_terminal()


def test_values_are_the_api_strings() -> None:
    assert [s.value for s in ALL] == ["new", "in progress", "ready", "failed", "interrupted"]
    assert JobStatus("in progress") is JobStatus.IN_PROGRESS


@pytest.mark.parametrize("target", ALL, ids=lambda s: s.name)
def test_sources_of(target: JobStatus) -> None:
    sources = sources_of(target)
    assert isinstance(sources, tuple)
    assert set(sources) == {s for s, t in EXPECTED if t is target}
    for s in sources:
        check_transition(s, target)


def test_sources_of_examples() -> None:
    assert sources_of(JobStatus.NEW) == ()
    assert sources_of(JobStatus.IN_PROGRESS) == (JobStatus.NEW,)
    assert sources_of(JobStatus.READY) == (JobStatus.IN_PROGRESS,)
    assert set(sources_of(JobStatus.FAILED)) == {JobStatus.NEW, JobStatus.IN_PROGRESS}
    assert set(sources_of(JobStatus.INTERRUPTED)) == {JobStatus.NEW, JobStatus.IN_PROGRESS}
