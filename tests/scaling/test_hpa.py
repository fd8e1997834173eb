"""The HPA algorithm against the controller's documented behaviour, step by step."""

from __future__ import annotations

import pytest

from conveyor.errors import ConfigurationError
from conveyor.scaling.hpa import (
    DEFAULT_BEHAVIOR,
    Autoscaler,
    Behavior,
    ScalingPolicy,
    ScalingRules,
    default_target,
    raw_recommendation,
)

FREE = Behavior(  # no windows, no rate limits to speak of: the raw recommendation shows
    scale_up=ScalingRules(0, (ScalingPolicy("Pods", 1000, 1),)),
    scale_down=ScalingRules(0, (ScalingPolicy("Pods", 1000, 1),)),
)


def test_raw_recommendation_is_metric_over_target_rounded_up() -> None:
    assert raw_recommendation(1000, 100, 3) == 10
    assert raw_recommendation(1001, 100, 3) == 11
    assert raw_recommendation(0, 100, 3) == 0


def test_tolerance_keeps_the_current_count_within_ten_percent() -> None:
    assert raw_recommendation(1090, 100, 10) == 10  # ratio 1.09
    assert raw_recommendation(910, 100, 10) == 10  # ratio 0.91
    assert raw_recommendation(1120, 100, 10) == 12  # ratio 1.12: outside


def test_bounds_clamp_the_result() -> None:
    hpa = Autoscaler(2, 5, 100, FREE)
    assert hpa.desired(0, 3, 0) == 2
    assert hpa.desired(1, 2, 10_000) == 5


def test_scale_up_doubles_or_adds_four_per_period_whichever_is_more() -> None:
    hpa = Autoscaler(1, 100, 10, DEFAULT_BEHAVIOR)
    assert hpa.desired(0, 1, 10_000) == 5  # +4 beats +100% of 1
    assert hpa.desired(5, 5, 10_000) == 5  # still within the same 15 s period
    assert hpa.desired(16, 5, 10_000) == 10  # next period: +100% of 5
    assert hpa.desired(31, 10, 10_000) == 20


def test_scale_down_waits_for_the_window_then_halves_per_minute() -> None:
    hpa = Autoscaler(1, 100, 10, DEFAULT_BEHAVIOR)
    assert hpa.desired(0, 20, 200) == 20  # at target
    for t in range(15, 300, 15):  # the backlog is gone, but the window remembers 20
        assert hpa.desired(t, 20, 0) == 20
    assert hpa.desired(300, 20, 0) == 10  # window over: at most half per 60 s
    assert hpa.desired(315, 10, 0) == 10
    assert hpa.desired(361, 10, 0) == 5
    assert hpa.desired(422, 5, 0) == 2  # int(5 * 0.5)
    assert hpa.desired(483, 2, 0) == 1


def test_a_dip_inside_the_scale_down_window_does_not_remove_workers() -> None:
    hpa = Autoscaler(1, 100, 10, DEFAULT_BEHAVIOR)
    assert hpa.desired(0, 8, 80) == 8
    assert hpa.desired(15, 8, 0) == 8  # one empty reading
    assert hpa.desired(30, 8, 80) == 8


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    behavior = Behavior(
        scale_up=ScalingRules(60, (ScalingPolicy("Pods", 1000, 1),)),
        scale_down=ScalingRules(0, (ScalingPolicy("Pods", 1000, 1),)),
    )
    hpa = Autoscaler(1, 100, 10, behavior)
    assert hpa.desired(0, 2, 20) == 2
    assert hpa.desired(15, 2, 100) == 2  # a spike: the window still holds 2
    assert hpa.desired(61, 2, 100) == 10  # sustained for the window


def test_min_select_takes_the_smaller_change() -> None:
    behavior = Behavior(
        scale_up=ScalingRules(
            0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)), "Min"
        ),
        scale_down=DEFAULT_BEHAVIOR.scale_down,
    )
    hpa = Autoscaler(1, 100, 10, behavior)
    assert hpa.desired(0, 10, 10_000) == 14  # +4 is less than +100%


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Autoscaler(0, 3, 10), "1 <= min <= max"),
        (lambda: Autoscaler(4, 3, 10), "1 <= min <= max"),
        (lambda: Autoscaler(1, 3, 0), "target"),
        (lambda: ScalingPolicy("Pods", 0, 15), "value >= 1"),
        (lambda: ScalingRules(-1, (ScalingPolicy("Pods", 1, 15),)), "negative"),
        (lambda: ScalingRules(0, ()), "at least one policy"),
    ],
)
def test_wrong_settings_are_refused(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()  # type: ignore[operator]


def test_a_period_starts_from_the_net_of_both_directions() -> None:
    """Up 2, down 2, then up again within one scale-up period: the period started at 1
    replica (net change 0), so 2 more may be added, as the controller computes it."""
    behavior = Behavior(
        scale_up=ScalingRules(0, (ScalingPolicy("Pods", 2, 60),)),
        scale_down=ScalingRules(0, (ScalingPolicy("Pods", 100, 1),)),
    )
    hpa = Autoscaler(1, 100, 10, behavior)
    assert hpa.desired(0, 1, 1000) == 3
    assert hpa.desired(10, 3, 0) == 1
    assert hpa.desired(20, 1, 1000) == 3


def test_default_target_is_eighty_percent_of_the_slots() -> None:
    assert [default_target(n) for n in (1, 2, 5, 10, 64, 128)] == [1, 1, 4, 8, 51, 102]


def test_a_limit_never_turns_the_direction_around() -> None:
    """Up 1 -> 4, down 4 -> 1; a minute later the scale-up has aged out of the period but
    the scale-down has not: the period "began" at 4, whose half (2) is above the current 1.
    With nothing queued the count must stay at 1, not rise to 2."""
    behavior = Behavior(
        scale_up=DEFAULT_BEHAVIOR.scale_up,
        scale_down=ScalingRules(10, (ScalingPolicy("Percent", 50, 60),)),
    )
    hpa = Autoscaler(1, 4, 3, behavior)
    assert hpa.desired(0, 1, 100) == 4
    assert hpa.desired(14, 4, 0) == 1
    assert hpa.desired(61, 1, 0) == 1
