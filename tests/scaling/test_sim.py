"""The autoscaling simulator: the model's properties, with the numbers worked out by hand,
and `conveyor autoscale-sim` on a typer app built the way cli/main.py builds its own."""

from __future__ import annotations

import csv
import itertools
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conveyor.cli import scale
from conveyor.errors import ConfigurationError
from conveyor.scaling.hpa import DEFAULT_BEHAVIOR, default_target, raw_recommendation
from conveyor.scaling.report import CSV_COLUMNS, describe, plot, timeline, write_csv
from conveyor.scaling.sim import SimConfig, Sine, Spike, Steady, simulate

# The defaults model the Helm chart's default worker pod: 64 tasks/s of 1 s each, so a busy
# worker holds 64 tasks (its 64 slots), and the HPA aims at default_target(64) = 51 a worker.
SLOTS, TARGET = 64, 51

# 10/s, then 500/s from 60 s to 120 s: eight workers' worth, while one serves.
SPIKE = SimConfig(
    Spike(rate=10, peak=500, start=60, length=60), duration=1200, min_replicas=1, max_replicas=20
)
# one worker through the spike: 500 - 64 more waiting each second for 60 s, plus 64 running
SPIKE_PEAK = 60 * (500 - SLOTS) + SLOTS


def increases(series: list[int]) -> list[int]:
    return [t for t in range(1, len(series)) if series[t] > series[t - 1]]


def decreases(series: list[int]) -> list[int]:
    return [t for t in range(1, len(series)) if series[t] < series[t - 1]]


# -- the model -------------------------------------------------------------------------------


def test_the_defaults_are_the_charts_default_pod_and_target() -> None:
    config = SimConfig(Steady(1))
    assert (config.worker_rate, config.service_time, config.target) == (64, 1, None)
    assert (config.min_replicas, config.max_replicas, config.sync_period) == (3, 30, 15)
    assert config.slots == SLOTS
    assert config.effective_target == default_target(SLOTS) == TARGET
    assert config.parameters()["target"] == TARGET


@pytest.mark.parametrize(
    ("worker_rate", "service_time", "slots"),
    [(64, 1, 64), (20, 2.5, 50), (30, 0.5, 15), (100, 0.1, 10), (4, 0.2, 1), (5, 0, 0)],
)
def test_the_default_target_is_default_target_of_the_slots(
    worker_rate: float, service_time: float, slots: int
) -> None:
    config = SimConfig(Steady(1), worker_rate=worker_rate, service_time=service_time)
    # a busy worker holds worker_rate x service_time tasks: those are its slots
    assert config.slots == slots
    assert config.effective_target == default_target(slots) == max(1, slots * 4 // 5)
    assert f"target {default_target(slots)} (default for {slots} slots)," in describe(config)
    chosen = SimConfig(Steady(1), worker_rate=worker_rate, service_time=service_time, target=100)
    assert chosen.effective_target == chosen.parameters()["target"] == 100
    assert "target 100," in describe(chosen)


def test_the_run_scales_on_the_effective_target() -> None:
    # 600 tasks/s of 1 s are 600 running: ceil(600 / 51) = 12 workers by default, 6 at 100
    runs = {
        target: simulate(SimConfig(Steady(600), min_replicas=1, duration=1200, target=target))
        for target in (None, TARGET, 100)
    }
    assert runs[None].desired == runs[TARGET].desired
    assert runs[None].desired[-1] == 12
    assert runs[100].desired != runs[None].desired


def test_steady_load_under_one_worker_stays_at_min_with_latency_of_one_run() -> None:
    result = simulate(SimConfig(Steady(30), duration=600))
    summary = result.summary
    # 30 tasks/s all start in the second they arrive, and run 1 s: the backlog is the 30
    # running, below 3 workers x 51, so the HPA keeps the minimum
    assert set(result.desired) == set(result.ready) == {3}
    assert result.backlog == [30] * 600
    assert summary.latency_p50 == summary.latency_p99 == summary.latency_max == 1.0
    assert summary.scale_ups == summary.scale_downs == 0
    assert summary.worker_seconds == 3 * 600
    assert summary.arrived == 30 * 600
    assert summary.completed == 30 * 599  # the last second's tasks are still running


def test_fractional_rates_carry_over_to_whole_tasks() -> None:
    result = simulate(SimConfig(Steady(0.5), worker_rate=0.25, service_time=0, duration=12))
    assert result.arrived == [0, 1] * 6
    # 3 workers x 0.25/s = 0.75 tasks a second, saved up only while a task waits: each task
    # (seconds 1, 3, ..., 11) starts one second after it came, the last one not at all
    assert result.completed == [0, 0] + [1, 0] * 5
    assert (result.summary.completed, result.summary.left) == (5, 1)
    assert result.summary.latency_p50 == result.summary.latency_max == 1.0


@pytest.mark.parametrize("service_time", [0.25, 1.0, 2.5])
def test_the_backlog_counts_the_running_tasks_also_for_short_runs(service_time: float) -> None:
    result = simulate(
        SimConfig(Steady(400), worker_rate=1000, service_time=service_time, duration=60)
    )
    # 400 start each second (3 workers could start 3,000) and each runs service_time: by
    # Little's law 400 x service_time are running at any moment, and none waits (the default
    # target, 80% of 1,000 x service_time a worker, keeps 3)
    assert set(result.backlog[5:]) == {round(400 * service_time)}
    assert result.summary.latency_max == service_time


def test_a_target_above_what_busy_workers_hold_cycles_and_the_default_settles() -> None:
    # 400/s of 1 s tasks: 7 workers of 64/s are needed (6.25), and hold 64 running tasks each
    settles = simulate(SimConfig(Steady(400), duration=3600))
    # with enough workers the backlog is the 400 running, which asks for ceil(400 / 51) = 8;
    # at 8 the ratio 400 / (8 x 51) is within the 10% tolerance, and 8 x 64 = 512/s keep up
    # with the load, so the backlog stays the 400 running and nothing changes any more
    assert set(settles.desired[-1800:]) == {8}
    assert set(settles.backlog[-1800:]) == {400}
    cycles = simulate(SimConfig(Steady(400), duration=3600, target=100))
    # the same 400 running ask for 4 at target 100 (min 3), which serve 256/s: after the
    # window the HPA removes workers until the queue grows again, then adds them back
    first_down = decreases(cycles.desired)[0]
    assert [t for t in increases(cycles.desired) if t > first_down]
    assert cycles.summary.scale_downs >= 4
    assert cycles.summary.worker_seconds > settles.summary.worker_seconds


def test_a_spike_scales_up_by_the_rate_policies_once_the_metric_shows_it() -> None:
    result = simulate(SPIKE)
    # the spike starts in second 60: the backlog at instant 61 is the first to show it; the
    # HPA reads 30 s old values every 15 s, so it sees it at the sync of 105 (91 is not one),
    # reading 15 s of spike: 15 x 436 + 64 = 6,604 tasks, which ask for 130 workers.
    # 1 -> 5 (+4 beats +100%), then doubling every 15 s, up to max 20
    assert increases(result.desired) == [105, 120, 135]
    assert [result.desired[t] for t in (104, 105, 120, 135)] == [1, 5, 10, 20]
    # each worker serves 20 s after it was asked for
    assert increases(result.ready) == [125, 140, 155]
    assert [result.ready[t] for t in (124, 125, 140, 155)] == [1, 5, 10, 20]
    # one worker alone through the spike: 436 more waiting each second for 60 s, plus the
    # 64 running at its end
    assert result.summary.peak_backlog == SPIKE_PEAK == 26_224
    assert result.backlog.index(SPIKE_PEAK) == 119
    # drained back to the 10 tasks/s of 1 s running, at 1 worker in the end
    assert result.backlog[-1] == 10 and result.desired[-1] == 1


def test_after_a_spike_the_scale_down_waits_for_the_window_then_halves_at_most() -> None:
    result = simulate(SPIKE)
    syncs = [t for t in result.t if result.metric[t] is not None]
    # the last sync whose reading alone asked for all 20 workers
    last_high = max(
        t
        for t in syncs
        if raw_recommendation(result.metric[t] or 0, TARGET, result.desired[t - 1]) >= 20
    )
    first_down = decreases(result.desired)[0]
    # the scale-down window remembers that reading for 300 s, and no longer
    assert first_down == last_high + 300
    assert set(result.desired[135:first_down]) == {20}
    # the policy: at most half of the replicas of a minute ago are removed
    for t in range(60, len(result.desired)):
        assert result.desired[t] >= result.desired[t - 60] // 2
    assert result.summary.scale_downs == len(decreases(result.desired)) >= 4  # 20 to 1


@pytest.mark.parametrize(
    ("sync_period", "metric_delay", "first_sync_seeing_it"),
    [(15, 30, 105), (15, 0, 75), (30, 30, 120), (10, 5, 70), (1, 0, 61)],
)
def test_the_first_scale_up_waits_for_the_metric_delay_and_the_next_sync(
    sync_period: int, metric_delay: int, first_sync_seeing_it: int
) -> None:
    config = SimConfig(
        SPIKE.profile,
        duration=300,
        min_replicas=1,
        max_replicas=20,
        sync_period=sync_period,
        metric_delay=metric_delay,
        startup=7,
    )
    result = simulate(config)
    # the first sync at or after 61 + delay (the backlog at instant 61 is the spike's first)
    assert increases(result.desired)[0] == first_sync_seeing_it
    assert increases(result.ready)[0] == first_sync_seeing_it + 7


def test_workers_become_ready_exactly_startup_after_they_are_asked_for() -> None:
    config = SimConfig(Sine(50, 900, 600), duration=1800, startup=45)
    result = simulate(config)
    for t in increases(result.ready):
        assert result.desired[t - 45] > result.desired[t - 46]
    for t in result.t:
        assert result.ready[t] <= result.desired[t]


@pytest.mark.parametrize(
    "profile", [Steady(400), Spike(100, 1000, 300, 300), Sine(100, 1000, 1200), Steady(0.3)]
)
def test_every_task_is_accounted_for_at_every_second(profile: Steady | Spike | Sine) -> None:
    result = simulate(SimConfig(profile, worker_rate=37.5, service_time=2.6))
    arrived = completed = 0
    for t in result.t:
        arrived += result.arrived[t]
        completed += result.completed[t]
        assert arrived == completed + result.backlog[t]
        assert sum(result.waits[t].values()) == result.completed[t]
    summary = result.summary
    assert summary.arrived == summary.completed + summary.left
    assert summary.left == result.backlog[-1]


def test_the_replicas_stay_within_the_bounds() -> None:
    result = simulate(SimConfig(Steady(5000), duration=900, min_replicas=2, max_replicas=7))
    assert max(result.desired) == result.summary.max_replicas == 7
    assert min(result.desired) >= 2 and max(result.ready) == 7
    # 7 workers serve 448 of the 5,000 tasks/s: the backlog never stops growing
    assert all(b < a for b, a in zip(result.backlog, result.backlog[1:], strict=False))


def test_a_longer_scale_down_window_keeps_at_least_as_many_workers() -> None:
    runs = [
        simulate(SimConfig(**{**vars(SPIKE), "behavior": DEFAULT_BEHAVIOR.with_windows(0, window)}))
        for window in (120, 300, 600)
    ]
    # the spike has drained (in what the HPA reads) before the first scale-down of the
    # shortest window, so every run reads the same backlog at every sync ...
    assert runs[0].metric == runs[1].metric == runs[2].metric
    # ... and then a window that remembers more high readings never asks for fewer workers
    for shorter, longer in itertools.pairwise(runs):
        assert all(s <= g for s, g in zip(shorter.desired, longer.desired, strict=True))
        assert shorter.summary.worker_seconds < longer.summary.worker_seconds
        assert decreases(shorter.desired)[0] < decreases(longer.desired)[0]


def test_a_sine_goes_from_base_to_peak_and_back_each_period() -> None:
    profile = Sine(100, 700, 600)
    assert profile.rate_at(0) == 100
    assert profile.rate_at(300) == pytest.approx(700)
    assert profile.rate_at(600) == pytest.approx(100)
    result = simulate(SimConfig(profile, duration=1200))
    # the cosine sums to 0 over whole periods: the mean rate is the midpoint
    assert abs(result.summary.arrived - 1200 * 400) <= 1


def test_the_same_config_gives_the_same_run() -> None:
    config = SimConfig(Sine(100, 1000, 900))
    first, second = simulate(config), simulate(config)
    assert first.summary == second.summary
    assert first.desired == second.desired and first.backlog == second.backlog


def test_timeline_rows_cover_the_run() -> None:
    result = simulate(SPIKE)
    rows = timeline(result, 60)
    assert len(rows) == 20 and rows[-1].end == 1200
    spike = rows[1]  # seconds 60-119: all at 500/s, one worker
    assert spike.rate == 500 and spike.backlog == SPIKE_PEAK
    assert (spike.desired, spike.ready) == (5, 1)  # asked for at 105, ready at 125
    assert rows[0].p50 == rows[0].p99 == 1.0
    assert sum(r.rate * (r.end - r.start) for r in rows) == result.summary.arrived
    assert len(timeline(result, 7)) == math.ceil(1200 / 7)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Steady(-1), "rate of 0 tasks/s or more"),
        (lambda: Spike(10, -5, 0, 10), "peak must be a rate"),
        (lambda: Spike(10, 50, -1, 10), "cannot be negative"),
        (lambda: Sine(10, 50, 0), "period"),
        (lambda: SimConfig(Steady(1), worker_rate=0), "worker rate"),
        (lambda: SimConfig(Steady(1), service_time=-1), "service time"),
        (lambda: SimConfig(Steady(1), duration=0), "duration"),
        (lambda: SimConfig(Steady(1), sync_period=0), "sync period"),
        (lambda: SimConfig(Steady(1), startup=-1), "cannot be negative"),
        (lambda: SimConfig(Steady(1), target=0), "target must be above 0"),
        (lambda: SimConfig(Steady(1), target=math.nan), "target must be above 0"),
        (lambda: simulate(SimConfig(Steady(1), min_replicas=5, max_replicas=2)), "min <= max"),
        (lambda: DEFAULT_BEHAVIOR.with_windows(0, -1), "cannot be negative"),
    ],
)
def test_wrong_settings_are_refused(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()  # type: ignore[operator]


# -- files -----------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_real_png(tmp_path: Path) -> None:
    path = tmp_path / "spike.png"
    plot(simulate(SPIKE), path)
    assert png_size(path) == (1000, 850)  # 10 x 8.5 inches at 100 dpi
    assert 20_000 < path.stat().st_size < 1_000_000


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a None entry in sys.modules makes the import fail, as if matplotlib were not installed
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'conveyor\[plot\]'"):
        plot(simulate(SimConfig(Steady(1), duration=10)), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_csv_has_one_row_per_second(tmp_path: Path) -> None:
    result = simulate(SPIKE)
    path = tmp_path / "run.csv"
    write_csv(result, path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 1200
    assert [int(r["desired"]) for r in rows] == result.desired
    assert [int(r["backlog"]) for r in rows] == result.backlog
    assert rows[105]["metric"] == str(result.backlog[74]) and rows[106]["metric"] == ""
    assert rows[0]["p99"] == "" and rows[1]["p99"] == "1"


# -- the command -----------------------------------------------------------------------------


def make_cli() -> typer.Typer:
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @cli.callback()
    def main() -> None:  # a group, so the command is called by its name as in `conveyor`
        pass

    scale.register(cli)
    return cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(make_cli(), ["autoscale-sim", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_prints_the_summary_and_a_timeline() -> None:
    code, stdout, _ = run("--profile", "spike", "--rate", "10", "--peak", "500", "--spike-at", "60",
                          "--spike-for", "60", "--duration", "1200", "--min", "1", "--max", "20")  # fmt: skip
    assert code == 0, stdout
    assert "spike 10/s, 500/s from 1:00 for 60 s" in stdout
    assert "worker 64 tasks/s of 1 s;" in stdout
    assert "target 51 (default for 64 slots)," in stdout
    assert "peak backlog" in stdout and "26,224" in stdout
    assert "scale-ups / scale-downs" in stdout
    timeline_rows = [line for line in stdout.splitlines() if line.startswith("│ ") and ":" in line]
    assert len(timeline_rows) == 20  # one a minute
    assert timeline_rows[1].split("│")[2].strip() == "500"


def test_cli_json_is_the_summary(tmp_path: Path) -> None:
    png, table = tmp_path / "run.png", tmp_path / "run.csv"
    code, stdout, _ = run("--profile", "sine", "--rate", "100", "--peak", "900", "--json",
                          "--png", str(png), "--csv", str(table))  # fmt: skip
    assert code == 0, stdout
    report = json.loads(stdout)
    expected = simulate(SimConfig(Sine(100, 900, 1200)))
    assert report["summary"] == expected.summary.as_dict()
    assert report["parameters"]["profile"] == "sine" and report["parameters"]["target"] == TARGET
    assert report["parameters"]["worker_rate"] == 64
    assert png_size(png) == (1000, 850)
    assert len(table.read_text().splitlines()) == 1801


def test_cli_target_and_worker_options_reach_the_run() -> None:
    args = ["--rate", "400", "--json"]
    code, stdout, _ = run(*args, "--target", "100")
    assert code == 0, stdout
    report = json.loads(stdout)
    assert report["parameters"]["target"] == 100
    assert report["summary"] == simulate(SimConfig(Steady(400), target=100)).summary.as_dict()
    # 40/s of 2.5 s: 100 slots, so the default target is 80
    code, stdout, _ = run(*args, "--worker-rate", "40", "--service-time", "2.5")
    assert code == 0, stdout
    report = json.loads(stdout)
    assert report["parameters"]["target"] == default_target(100) == 80
    expected = simulate(SimConfig(Steady(400), worker_rate=40, service_time=2.5))
    assert report["summary"] == expected.summary.as_dict()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min", "5", "--max", "2"], "1 <= min <= max"),
        (["--target", "0"], "target must be above 0"),
        (["--rate", "-5"], "rate of 0 tasks/s or more"),
        (["--worker-rate", "0"], "worker rate"),
        (["--scale-down-window", "-1"], "cannot be negative"),
        (["--every", "0"], "--every"),
        (["--png", "/nonexistent/dir/x.png"], "cannot write /nonexistent/dir/x.png"),
        (["--csv", "/nonexistent/dir/x.csv"], "cannot write /nonexistent/dir/x.csv"),
    ],
)
def test_cli_bad_input_is_one_readable_line(args: list[str], message: str) -> None:
    code, stdout, stderr = run("--duration", "60", *args)
    assert code != 0
    assert "Traceback" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert message in lines[0]
    assert stdout == ""


def test_cli_an_unknown_profile_is_refused_with_the_choices() -> None:
    """``--profile`` is a choice: click refuses a bad one with its usage error (exit 2)."""
    code, stdout, stderr = run("--duration", "60", "--profile", "square")
    assert code == 2 and stdout == ""
    assert "Traceback" not in stderr
    assert "'square' is not one of" in stderr and "steady" in stderr
