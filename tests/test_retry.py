"""Retry delays and retry decisions (pure: no Redis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.errors import EventcoreError
from eventcore.events import Backoff, ErrorInfo, RetryPolicy
from workers.retry import Retry, backoff_delay, should_retry

seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False)
policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 20),
    backoff=st.sampled_from(Backoff),
    delay=seconds,
    cap=seconds,
    jitter=st.floats(min_value=0, max_value=1),
    retry_on=st.lists(st.sampled_from(["OSError", "TimeoutError", "TaskError"]), max_size=2).map(
        tuple
    ),
)
attempts = st.integers(min_value=1, max_value=200) | st.integers(min_value=1, max_value=2**2000)
rands = st.floats(min_value=0, max_value=1, exclude_max=True)


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (Backoff.FIXED, [2.0, 2.0, 2.0, 2.0, 2.0]),
        (Backoff.LINEAR, [2.0, 4.0, 6.0, 8.0, 10.0]),
        (Backoff.EXPONENTIAL, [2.0, 4.0, 8.0, 16.0, 32.0]),
    ],
)
def test_delay_without_jitter_is_the_formula(backoff: Backoff, expected: list[float]) -> None:
    policy = RetryPolicy(backoff=backoff, delay=2.0, cap=1000.0, jitter=0.0)
    assert [backoff_delay(policy, a, 0.7) for a in range(1, 6)] == expected


def test_delay_is_capped_before_jitter() -> None:
    policy = RetryPolicy(backoff=Backoff.EXPONENTIAL, delay=1.0, cap=10.0, jitter=0.0)
    assert [backoff_delay(policy, a, 0.0) for a in (4, 5, 6)] == [8.0, 10.0, 10.0]
    jittered = RetryPolicy(backoff=Backoff.EXPONENTIAL, delay=1.0, cap=10.0, jitter=0.5)
    # Half of the capped 10 s is randomised: 5 + 5 * rand.
    assert backoff_delay(jittered, 6, 0.0) == 5.0
    assert backoff_delay(jittered, 6, 0.5) == 7.5


def test_full_jitter_spans_zero_to_the_delay() -> None:
    policy = RetryPolicy(backoff=Backoff.FIXED, delay=8.0, jitter=1.0)
    assert backoff_delay(policy, 1, 0.0) == 0.0
    assert backoff_delay(policy, 1, 0.25) == 2.0
    assert backoff_delay(policy, 1, 0.999) < 8.0


def test_partial_jitter_keeps_the_fixed_part() -> None:
    policy = RetryPolicy(backoff=Backoff.FIXED, delay=10.0, jitter=0.2)
    assert backoff_delay(policy, 1, 0.0) == pytest.approx(8.0)
    assert backoff_delay(policy, 1, 0.5) == pytest.approx(9.0)


def test_out_of_range_inputs_are_clamped() -> None:
    """A policy built in code skips config's checks; it still gives a sane delay."""
    odd = RetryPolicy(backoff=Backoff.LINEAR, delay=-5.0, cap=-1.0, jitter=3.0)
    assert backoff_delay(odd, 1, 0.5) == 0.0
    policy = RetryPolicy(backoff=Backoff.EXPONENTIAL, delay=3.0, jitter=0.0)
    assert backoff_delay(policy, 0, 0.5) == backoff_delay(policy, 1, 0.5) == 3.0
    assert backoff_delay(RetryPolicy(delay=4.0, jitter=1.0), 1, 7.0) == 4.0


@given(policies, attempts, rands)
def test_delay_stays_within_zero_and_cap(policy: RetryPolicy, attempt: int, rand: float) -> None:
    delay = backoff_delay(policy, attempt, rand)
    assert math.isfinite(delay)
    assert 0.0 <= delay <= policy.cap


@given(policies, st.integers(min_value=2**1000, max_value=2**5000), rands)
def test_huge_attempts_do_not_overflow(policy: RetryPolicy, attempt: int, rand: float) -> None:
    unjittered = RetryPolicy(backoff=policy.backoff, delay=policy.delay, cap=policy.cap, jitter=0.0)
    delay = backoff_delay(unjittered, attempt, rand)
    if policy.backoff is Backoff.FIXED:
        assert delay == min(policy.delay, policy.cap)
    elif policy.delay >= 1e-290:  # any delay that is not absurdly small reaches the cap
        assert delay == policy.cap
    assert 0.0 <= backoff_delay(policy, attempt, rand) <= policy.cap


@given(policies, attempts, rands)
def test_exponential_never_shrinks_without_jitter(
    policy: RetryPolicy, attempt: int, rand: float
) -> None:
    exp = RetryPolicy(backoff=Backoff.EXPONENTIAL, delay=policy.delay, cap=policy.cap, jitter=0.0)
    assert backoff_delay(exp, attempt, rand) <= backoff_delay(exp, attempt + 1, rand)


@given(policies, st.integers(min_value=1, max_value=60), rands)
def test_no_jitter_means_no_randomness(policy: RetryPolicy, attempt: int, rand: float) -> None:
    exact = RetryPolicy(backoff=policy.backoff, delay=policy.delay, cap=policy.cap, jitter=0.0)
    factor = {Backoff.FIXED: 1, Backoff.LINEAR: attempt, Backoff.EXPONENTIAL: 2 ** (attempt - 1)}
    expected = min(policy.delay * factor[policy.backoff], policy.cap)
    assert backoff_delay(exact, attempt, rand) == expected


@given(policies, attempts, rands, rands)
def test_more_rand_never_means_less_delay(
    policy: RetryPolicy, attempt: int, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    assert backoff_delay(policy, attempt, low) <= backoff_delay(policy, attempt, high)


# -- should_retry ---------------------------------------------------------------

OS_ERROR = ErrorInfo(type="OSError", message="disk full")
FATAL = ErrorInfo(type="OSError", message="bad input", retryable=False)
VALUE_ERROR = ErrorInfo(type="ValueError", message="no")


@pytest.mark.parametrize(
    ("max_retries", "retry_on", "error", "attempt", "expected"),
    [
        # Attempts 1..max_retries may be followed by a retry; the next may not.
        (3, (), OS_ERROR, 1, True),
        (3, (), OS_ERROR, 3, True),
        (3, (), OS_ERROR, 4, False),
        (0, (), OS_ERROR, 1, False),
        # Non-retryable errors never retry, whatever else the policy says.
        (3, (), FATAL, 1, False),
        (3, ("OSError",), FATAL, 1, False),
        # retry_on: only listed types retry; empty means every type.
        (3, ("OSError",), OS_ERROR, 1, True),
        (3, ("OSError",), VALUE_ERROR, 1, False),
        (3, ("OSError", "ValueError"), VALUE_ERROR, 2, True),
        (3, ("OSError",), OS_ERROR, 4, False),
        (3, (), VALUE_ERROR, 2, True),
    ],
)
def test_should_retry_truth_table(
    max_retries: int, retry_on: tuple[str, ...], error: ErrorInfo, attempt: int, expected: bool
) -> None:
    policy = RetryPolicy(max_retries=max_retries, retry_on=retry_on)
    assert should_retry(policy, error, attempt) is expected


@given(policies, attempts, st.sampled_from([OS_ERROR, FATAL, VALUE_ERROR]))
def test_should_retry_matches_its_definition(
    policy: RetryPolicy, attempt: int, error: ErrorInfo
) -> None:
    expected = (
        error.retryable
        and attempt <= policy.max_retries
        and (not policy.retry_on or error.type in policy.retry_on)
    )
    assert should_retry(policy, error, attempt) is expected


# -- Retry ------------------------------------------------------------------------


def test_retry_exception_carries_its_delay_and_message() -> None:
    plain = Retry()
    assert isinstance(plain, EventcoreError)
    assert plain.delay is None and plain.message == ""
    assert str(plain) == "handler asked for a retry"
    custom = Retry(delay=2.5, message="model still loading")
    assert custom.delay == 2.5 and str(custom) == "model still loading"
    with pytest.raises(Retry):
        raise custom


@pytest.mark.parametrize("delay", [-1.0, math.nan])
def test_retry_refuses_a_delay_that_is_no_wait(delay: float) -> None:
    with pytest.raises(ValueError, match="Retry delay"):
        Retry(delay=delay)
