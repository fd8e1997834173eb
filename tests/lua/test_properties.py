"""Property-based tests of the transition scripts: random interleavings against real Redis.

A hypothesis state machine (properties_machine.py) drives the real :class:`Store` (and so
the real Lua scripts) on a real redis-server: it starts workflows (some with an on_cancel
step), reads their tasks as several consumers, takes entries over from each other
(XAUTOCLAIM with no minimum idle time, so any pending entry can be stolen at any point),
renews leases (heartbeat: a renewed entry is not taken over, a stolen one is reported),
commits every kind of outcome (next, sleep, return, fan_out, wait, child, retry,
hold-back, dead), commits stale copies after a takeover and replays old transitions
verbatim, promotes delayed tasks, signals, cancels (a child, or a parent and so its
children; an on_cancel step runs in the cancelled workflow), replays dead letters and
trims. Each operation is also applied to a small model (properties_model.py); after every
step the keyspace is compared with it (properties_checks.py):

1. every task is committed at most once: the codes Redis returns are the model's, and each
   workflow's history has at most one final record per task and none after it (a replayed
   task aside);
2. every workflow is in exactly one terminal state once it ends, and leaves it only by a
   replay; once everything is drained (teardown) every workflow is terminal; the stopped
   set holds exactly the failed and cancelled ones;
3. no task is both pending (in a PEL, in a delayed set, or queued) and done: committed
   entries leave the PEL (owned by the consumer that took them last), a queued entry of a
   running workflow names an active task, and no task has two entries (none doubled); plus:
   every active task still has an entry, a wait, or a child that runs (none lost);
4. a task that failed for good has exactly one dead letter until it is replayed;
5. a child is registered with its parent while it runs, and its end hands the parent task
   waiting on it the child's outcome exactly once (a value, or the child's error).

Wait timers are admitted as the worker admits them (claim.lua, and a timer that lost is
acknowledged unrun); test_timer_claims.py reproduces by hand the two bugs the machine found
there. A second test runs the machine against mutated copies of the scripts (never the
files) to show that it catches each broken guarantee.

Settings profiles, chosen by the environment variable ``CONVEYOR_HYPOTHESIS_PROFILE``:
``ci`` (the default: sized for the suite's time budget) and ``full`` (500 runs of up to 60
steps: a local soak of several minutes):

    CONVEYOR_HYPOTHESIS_PROFILE=full .venv/bin/pytest tests/lua/test_properties.py -n 2

A failure prints the shortest sequence of steps found and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from conveyor.embedded import EmbeddedRedis

from .properties_machine import TransitionMachine

PROFILES = {
    "ci": settings(max_examples=50, stateful_step_count=30),
    "full": settings(max_examples=500, stateful_step_count=60),
}
for _name, _profile in PROFILES.items():
    settings.register_profile(
        f"conveyor-lua-{_name}",
        _profile,
        deadline=None,
        database=None,  # nothing written into the tree; print_blob reproduces a failure
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
PROFILE = os.environ.get("CONVEYOR_HYPOTHESIS_PROFILE", "ci")
# applied to this module's tests only (load_profile would change every other test's)
TEST_SETTINGS = settings.get_profile(f"conveyor-lua-{PROFILE}")


def run_machine(url: str, config: settings, mutant: tuple[bytes, bytes] | None = None) -> None:
    machine = type("TransitionMachine", (TransitionMachine,), {"url": url, "mutant": mutant})
    run_state_machine_as_test(machine, settings=config)


@pytest.mark.timeout(300 if PROFILE == "ci" else 7200)
def test_transitions_keep_their_invariants(redis_server: EmbeddedRedis) -> None:
    run_machine(redis_server.url, TEST_SETTINGS)


# -- the machine must be able to fail: each mutant breaks one guarantee of the scripts -------

MUTANTS: dict[str, tuple[bytes, bytes]] = {
    # a redelivered entry is committed again (its ACK said it was done already)
    "ignores_the_ack": (b"  if acked == 0 then\n    return 1\n  end\n", b""),
    # committed entries stay pending forever
    "skips_the_ack": (
        b"local acked = redis.call('XACK', K[1], group, A[2])",
        b"local acked = 1",
    ),
    # a task of a cancelled or failed workflow, or one another entry already did, runs again
    "ignores_the_task": (
        b"if redis.call('HDEL', W.key, task, 'k:' .. A[3]) == 0 then\n    return 1\n  end",
        b"redis.call('HDEL', W.key, task, 'k:' .. A[3])",
    ),
    # a failed or cancelled workflow keeps its tasks and waits active
    "finish_keeps_tasks": (b"    hdel_all(W.key, drop)\n", b""),
    # a child's end never resumes the parent task waiting on it
    "child_never_resumes": (b"  enqueue(W.pstream, P, step, n, input, frame)\n", b""),
    # a child that ended stays registered with its parent
    "child_stays_registered": (
        b"redis.call('HDEL', W.pkey, 'c:' .. W.id)",
        b"redis.call('HGET', W.pkey, 'c:' .. W.id)",
    ),
    # a cancel forgets the workflow's on_cancel step
    "cancel_forgets_on_cancel": (b"  enqueue(KEYS[3], W, step, seq, info, CANCEL_FRAME)\n", b""),
    # a replayed workflow stays in the stopped set: workers would drop its task unrun
    "replay_stays_stopped": (b"redis.call('ZREM', KEYS[5], e.workflow_id)\n", b""),
    # a heartbeat renews entries another consumer took over (and steals them back)
    "heartbeat_renews_any": (b"if p[1][2] == ARGV[2] then", b"if true then"),
    # a heartbeat reports but does not renew: the entry is taken over
    "heartbeat_skips_renewal": (
        b"redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')",
        b"",
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_machine_catches_a_broken_script(redis7: EmbeddedRedis, name: str) -> None:
    config = settings(
        TEST_SETTINGS, max_examples=100, derandomize=True, phases=[Phase.generate],
        print_blob=False, report_multiple_bugs=False,
    )  # fmt: skip
    with pytest.raises(AssertionError):
        run_machine(redis7.url, config, MUTANTS[name])
