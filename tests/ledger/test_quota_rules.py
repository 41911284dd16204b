"""The rolling-window arithmetic, checked exhaustively with Hypothesis (no database)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.ledger import QuotaKind, QuotaPolicy, QuotaSetting
from bot.ledger.quota import WINDOW, CountedImages, available_at, images_used, next_increase

from .conftest import T0

NOW = T0
US = timedelta(microseconds=1)

counted_lists = st.lists(
    st.builds(
        CountedImages,
        queued_at=st.integers(-2 * 24 * 3600, 0).map(lambda s: NOW + timedelta(seconds=s)),
        images=st.integers(1, 4),
    ),
    max_size=12,
)


def test_images_count_for_exactly_24_hours() -> None:
    job = [CountedImages(NOW, 3)]
    assert images_used(job, NOW + WINDOW - US) == 3
    assert images_used(job, NOW + WINDOW) == 0
    assert next_increase(job, NOW) == NOW + timedelta(hours=24)
    assert next_increase(job, NOW + WINDOW) is None


def test_next_increase_is_oldest_counted_job_plus_24h() -> None:
    jobs = [
        CountedImages(NOW - timedelta(hours=30), 1),  # already out of the window
        CountedImages(NOW - timedelta(hours=5), 2),
        CountedImages(NOW - timedelta(hours=1), 1),
    ]
    assert next_increase(jobs, NOW) == NOW + timedelta(hours=19)
    assert images_used(jobs, NOW) == 3


@given(counted_lists, st.integers(0, 20), st.integers(1, 6))
def test_available_at_is_the_earliest_time_the_request_fits(
    counted: list[CountedImages], limit: int, images: int
) -> None:
    at = available_at(counted, limit, images, NOW)
    if images > limit:
        assert at is None
        return
    assert at is not None and at >= NOW
    assert images_used(counted, at) + images <= limit
    if at > NOW:
        assert images_used(counted, at - US) + images > limit
        assert at in {c.queued_at + WINDOW for c in counted}


@given(counted_lists)
def test_used_never_grows_as_time_passes(counted: list[CountedImages]) -> None:
    times = [NOW + timedelta(hours=h) for h in range(0, 49, 3)]
    used = [images_used(counted, t) for t in times]
    assert used == sorted(used, reverse=True)
    assert used[-1] == 0


def test_policy_defaults_and_validation() -> None:
    policy = QuotaPolicy()
    assert (policy.daily_images, policy.max_queued_per_user, policy.window_hours) == (25, 2, 24)
    with pytest.raises(TypeError):
        QuotaPolicy(window_hours=12)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="daily_images"):
        QuotaPolicy(daily_images=-1)
    with pytest.raises(ValueError, match="max_queued_per_user"):
        QuotaPolicy(max_queued_per_user=0)


def test_settings_resolve_against_the_policy() -> None:
    policy = QuotaPolicy(daily_images=7)
    assert QuotaSetting(QuotaKind.DEFAULT).limit(policy) == 7
    assert QuotaSetting(QuotaKind.UNLIMITED).limit(policy) is None
    assert QuotaSetting(QuotaKind.LIMITED, 3).limit(policy) == 3
    assert QuotaSetting(QuotaKind.LIMITED, 0).blocked
    assert not QuotaSetting(QuotaKind.DEFAULT).blocked
    assert str(QuotaSetting(QuotaKind.LIMITED, 0)) == "blocked"
