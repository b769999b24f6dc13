"""Latency-aware (async) execution drops exactly the actions that are already in the past."""
import numpy as np

from harness.eval.rollout import async_chunk, stale_steps


def chunk(start, n=16):
    return (start + np.arange(n, dtype=np.float32))[:, None].repeat(2, axis=1)


def test_stale_steps_is_ceil_of_latency_times_rate():
    assert stale_steps(0.0, 10) == 0
    assert stale_steps(1.0, 10) == 1        # any latency costs a step
    assert stale_steps(300.0, 10) == 3      # exactly 3 control periods (no float round-up)
    assert stale_steps(301.0, 10) == 4
    assert stale_steps(1600.0, 15) == 24


def test_sync_executes_the_horizon_and_carries_the_rest():
    run, carry = async_chunk(chunk(0), chunk(100)[:0], horizon=8, late=0)
    assert run[:, 0].tolist() == list(range(8))
    assert carry[:, 0].tolist() == list(range(8, 16))


def test_late_actions_come_from_the_previous_chunk_and_new_ones_are_dropped():
    prev_carry = chunk(100, 8)                   # the previous chunk past its horizon
    run, carry = async_chunk(chunk(0), prev_carry, horizon=8, late=3)
    assert run[:, 0].tolist() == [100, 101, 102, 3, 4, 5, 6, 7]   # new actions 0..2 dropped
    assert len(run) == 8
    assert carry[:, 0].tolist() == list(range(8, 16))


def test_robot_holds_still_when_the_previous_chunk_runs_out():
    run, _ = async_chunk(chunk(0), chunk(100, 2), horizon=8, late=5)
    assert run[:, 0].tolist() == [100, 101, 0, 0, 0, 5, 6, 7]
    assert np.all(run[2:5] == 0)


def test_latency_beyond_the_horizon_drops_the_whole_executed_part():
    run, carry = async_chunk(chunk(0), chunk(100, 8), horizon=8, late=11)
    assert run[:, 0].tolist() == [100, 101, 102, 103, 104, 105, 106, 107, 0, 0, 0]
    assert carry[:, 0].tolist() == list(range(11, 16))    # actions 0..10 are in the past
