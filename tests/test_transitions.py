"""The task lifecycle table: its laws, and a state machine that walks it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventcore.errors import IllegalTransition
from eventcore.events import (
    TASK_EVENT_TYPES,
    TaskCancelRequested,
    TaskClaimed,
    TaskProgress,
    TaskResultStale,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)
from eventcore.transitions import (
    ANNOTATIONS,
    TERMINAL,
    TRANSITIONS,
    TaskStatus,
    is_legal,
    next_status,
)

event_types = st.sampled_from(TASK_EVENT_TYPES)
statuses = st.sampled_from([None, *TaskStatus])


def test_terminal_states_have_no_exits() -> None:
    for status in TERMINAL:
        for event_type, target in TRANSITIONS[status].items():
            assert event_type in ANNOTATIONS and target is status


def test_every_status_is_reachable_from_submitted() -> None:
    seen = {next_status(None, TaskSubmitted)}
    frontier = list(seen)
    while frontier:
        status = frontier.pop()
        for target in TRANSITIONS[status].values():
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(TaskStatus)


def test_every_live_status_can_still_end() -> None:
    for status in set(TaskStatus) - TERMINAL:
        assert any(t in TERMINAL for t in TRANSITIONS[status].values()), status


def test_only_submitted_starts_a_task() -> None:
    assert list(TRANSITIONS[None]) == [TaskSubmitted]
    assert all(not is_legal(s, TaskSubmitted) for s in TaskStatus)


@given(statuses, event_types)
def test_is_legal_agrees_with_next_status(status, event_type) -> None:
    if is_legal(status, event_type):
        assert next_status(status, event_type) in TaskStatus
    else:
        with pytest.raises(IllegalTransition):
            next_status(status, event_type)


@given(statuses, st.sampled_from(sorted(ANNOTATIONS, key=lambda c: c.type_name())))
def test_annotations_never_change_status(status, event_type) -> None:
    if status is not None and is_legal(status, event_type):
        assert next_status(status, event_type) is status


def test_illegal_move_names_status_and_event() -> None:
    with pytest.raises(IllegalTransition, match=r"task.succeeded.*queued"):
        next_status(TaskStatus.QUEUED, TaskSucceeded)


def test_happy_path() -> None:
    s = None
    for ev in (TaskSubmitted, TaskClaimed, TaskStarted, TaskProgress, TaskSucceeded):
        s = next_status(s, ev)
    assert s is TaskStatus.SUCCEEDED
    assert next_status(s, TaskResultStale) is TaskStatus.SUCCEEDED
    assert not is_legal(s, TaskCancelRequested)


class Lifecycle(RuleBasedStateMachine):
    """Random walks through the table: once terminal, only annotations are legal,
    and a task never returns to 'not yet submitted'."""

    def __init__(self) -> None:
        super().__init__()
        self.status: TaskStatus | None = None
        self.ended = False

    @rule(event_type=event_types)
    def apply(self, event_type) -> None:
        if not is_legal(self.status, event_type):
            with pytest.raises(IllegalTransition):
                next_status(self.status, event_type)
            return
        before = self.status
        self.status = next_status(self.status, event_type)
        if self.ended:
            assert event_type in ANNOTATIONS and self.status is before
        self.ended = self.status in TERMINAL

    @precondition(lambda self: self.status is not None and self.status not in TERMINAL)
    @rule()
    def can_always_be_cancelled(self) -> None:
        assert any(
            t is TaskStatus.CANCELLED or t is TaskStatus.DEAD_LETTERED
            for t in TRANSITIONS[self.status].values()
        )

    @invariant()
    def submitted_first(self) -> None:
        assert self.status is not None or not self.ended


TestLifecycle = Lifecycle.TestCase
