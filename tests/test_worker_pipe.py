"""The messages between a worker and its child processes: each kind goes
through the pipe's codec unchanged, and a run's last message gives the
outcome the worker settles."""

from __future__ import annotations

import pytest

from eventcore.events import ErrorInfo
from workers import pipe
from workers.outcomes import Ending, Outcome

TO_CHILD = [
    pipe.RunTask(task_id="t1", kind="sleep", params={"seconds": 1, "x": [1, "a"]}, attempt=2),
    pipe.RunTask(task_id="t2", kind="inpaint", params={}, attempt=1, model="lama"),
    pipe.Reload(),
    pipe.Stop(),
]
ERROR = ErrorInfo(type="ValueError", message="bad", traceback="tb", retryable=False)
FROM_CHILD = [
    pipe.Progress(fraction=0.5, message="step 1"),
    pipe.Progress(fraction=1.0),
    pipe.Returned(result={"a": [1, 2.5, None, "x"]}, duration=0.25, warm_models=("lama",)),
    pipe.Returned(),
    pipe.Raised(ending=Ending.ERROR, error=ERROR, duration=0.1),
    pipe.Raised(ending=Ending.RETRY, error=ERROR, retry_delay=3.0, warm_models=("gray",)),
    pipe.Raised(ending=Ending.CANCELLED),
]


@pytest.mark.parametrize("message", TO_CHILD, ids=lambda m: type(m).__name__)
def test_messages_to_the_child_round_trip(message: pipe.ToChild) -> None:
    assert pipe.TO_CHILD.decode(pipe.encode(message)) == message


@pytest.mark.parametrize("message", FROM_CHILD, ids=lambda m: type(m).__name__)
def test_messages_from_the_child_round_trip(message: pipe.FromChild) -> None:
    assert pipe.FROM_CHILD.decode(pipe.encode(message)) == message


def test_a_result_msgpack_cannot_carry_raises_type_error() -> None:
    """The child answers a TypeError here with an error outcome instead."""
    with pytest.raises(TypeError):
        pipe.encode(pipe.Returned(result=object()))


def test_the_last_message_gives_the_outcome() -> None:
    ok = pipe.Returned(result={"x": 1}, duration=0.5, warm_models=("lama",))
    assert pipe.outcome(ok) == Outcome(ending=Ending.OK, result={"x": 1}, duration=0.5)
    retry = pipe.Raised(ending=Ending.RETRY, error=ERROR, retry_delay=2.0, duration=0.1)
    assert pipe.outcome(retry) == Outcome(
        ending=Ending.RETRY, error=ERROR, retry_delay=2.0, duration=0.1
    )


def test_each_kind_has_its_own_tag() -> None:
    kinds = {type(m) for m in TO_CHILD + FROM_CHILD}
    tags = {k.__struct_config__.tag for k in kinds}
    assert len(tags) == len(kinds)
