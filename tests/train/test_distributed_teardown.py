"""Leaving the process group: a barrier after a normal end (no rank closes while a peer still talks), none
after an error (the peers may never arrive), and the group is gone either way."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from open4m import distributed
from open4m import train as train_module
from open4m.train_config import TrainConfig


@pytest.fixture
def group(monkeypatch):
    """A one-process gloo group; ``calls`` records the barriers taken."""
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    calls = []
    real = dist.barrier

    def barrier(*args, **kwargs):
        calls.append("barrier")
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, "barrier", barrier)
    yield calls
    if dist.is_initialized():
        dist.destroy_process_group()


def test_finished_run_waits_at_a_barrier_then_destroys_the_group(group):
    distributed.teardown(distributed.Dist(initialized=True), finished=True)
    assert group == ["barrier"]
    assert not dist.is_initialized()


def test_failed_run_destroys_the_group_without_waiting(group):
    distributed.teardown(distributed.Dist(initialized=True), finished=False)
    assert group == []
    assert not dist.is_initialized()


def test_teardown_leaves_a_group_it_did_not_join_alone(group):
    distributed.teardown(distributed.Dist(initialized=False), finished=True)
    assert group == [] and dist.is_initialized()


@pytest.mark.parametrize("fails", [False, True])
def test_train_tells_teardown_whether_it_finished(monkeypatch, fails):
    seen = []
    monkeypatch.setattr(distributed, "setup", lambda *a: distributed.Dist(initialized=True))
    monkeypatch.setattr(distributed, "teardown", lambda state, finished=True: seen.append(finished))

    def fake_train(*args):
        if fails:
            raise RuntimeError("rank failed")
        return {"losses": []}

    monkeypatch.setattr(train_module, "_train", fake_train)
    if fails:
        with pytest.raises(RuntimeError, match="rank failed"):
            train_module.train(TrainConfig())
    else:
        assert train_module.train(TrainConfig()) == {"losses": []}
    assert seen == [not fails]
