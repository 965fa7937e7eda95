"""The startup-latency lower bound: hand-worked cases, and no policy of the simulator beats it."""

from __future__ import annotations

import pytest

from bench.sim.bounds import Job, srpt_completion_sum, startup_lower_bound, wait_bound


def test_srpt_runs_the_shortest_remaining_work_first() -> None:
    # speed 1: a long job at 0, a short one at 1 preempts it
    jobs = [Job(0.0, 10.0, 1), Job(1.0, 2.0, 1)]
    assert srpt_completion_sum(jobs, 1.0) == pytest.approx(3.0 + 12.0)


def test_no_wait_is_forced_while_the_gpus_suffice() -> None:
    assert wait_bound([Job(0.0, 5.0, 1), Job(0.0, 5.0, 1)], gpus=2) == 0.0


def test_an_overloaded_cluster_forces_waiting() -> None:
    # 1 GPU, three 1-GPU jobs of 4 s at once: any schedule starts them at 0, 4, 8 (sum 12);
    # the bound is SRPT's sum C (4 + 8 + 12 = 24) - sum (t + p) (12) = 12: tight here
    jobs = [Job(0.0, 4.0, 1) for _ in range(3)]
    assert wait_bound(jobs, gpus=1) == pytest.approx(12.0)
    assert startup_lower_bound(jobs, gpus=1) == pytest.approx(4.0)


def test_wide_jobs_count_all_their_gpus() -> None:
    # two 2-GPU jobs on 2 GPUs: the second waits 1 s
    assert wait_bound([Job(0.0, 1.0, 2), Job(0.0, 1.0, 2)], gpus=2) == pytest.approx(1.0)
