"""tvm_ternary.tune: MetaSchedule over the rules' knobs, locally and over a tracker of boards."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tvm_ternary
from tvm_ternary.emulator import Board, Tracker

from .conftest import AVX2

CONV = dict(name="conv2d", scheme="ternary", data_shape=(1, 40, 9, 9), weight_shape=(16, 40, 3, 3), padding=1)


def records(work_dir) -> list:
    """``[trace, run_secs, target, args]`` of each record (JSON lines ``[workload, record]``)."""
    with open(work_dir / "database_tuning_record.json") as fh:
        return [json.loads(line)[1] for line in fh]


def measured(work_dir) -> list[float]:
    """Run times of the records that built and ran (MetaSchedule stores 1e10 for failures)."""
    return [min(r[1]) for r in records(work_dir) if r[1] and min(r[1]) < 1e9]


def check(f, rng):
    x = f.spec.scheme.activation.sample(rng, f.spec.data_shape)
    w = f.spec.scheme.weight.sample(rng, f.spec.weight_shape)
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))


def test_tune_locally_resume_and_apply(tmp_path, rng):
    work_dir = tvm_ternary.tune(**CONV, target=AVX2, trials=4, work_dir=tmp_path / "t", seed=0)
    assert len(records(work_dir)) == 4 and len(measured(work_dir)) == 4
    tvm_ternary.tune(**CONV, target=AVX2, trials=3, work_dir=work_dir, seed=1)        # resumes
    assert len(records(work_dir)) == 7
    f = tvm_ternary.op(**CONV, target=AVX2, tuned=work_dir)
    assert f.tuned
    check(f, rng)
    other = tvm_ternary.op("dense", "ternary", (1, 64), (8, 64), target=AVX2, tuned=work_dir)
    assert not other.tuned                     # no record for this operator: the hand schedule
    check(other, rng)


def test_tune_over_a_tracker_of_emulated_boards(tmp_path, rng):
    with Tracker() as tracker, Board(tracker=tracker.address, key="rasp4"), \
            Board(tracker=tracker.address, key="rasp4"):
        remote = {"tracker": tracker.address, "key": "rasp4"}
        shape = dict(name="dense", scheme="ternary", data_shape=(2, 256), weight_shape=(32, 256))
        work_dir = tvm_ternary.tune(**shape, target="rasp4", trials=4, work_dir=tmp_path / "pi", remote=remote)
        assert len(measured(work_dir)) == 4                                 # all ran on the boards
        assert all(r[2]["mcpu"] == "cortex-a72" for r in records(work_dir))
        f = tvm_ternary.op(**shape, target="rasp4", tuned=work_dir, remote=remote)
        assert f.tuned
        check(f, rng)


def test_tune_errors(tmp_path):
    with pytest.raises(ValueError, match="trials must be >= 1"):
        tvm_ternary.tune(**CONV, trials=0, work_dir=tmp_path)
    with pytest.raises(ValueError, match="goes through a tracker"):
        tvm_ternary.tune(**CONV, target="rasp4", trials=1, work_dir=tmp_path, remote="127.0.0.1:9090")
    with pytest.raises(RuntimeError, match="cannot measure .* here"):
        tvm_ternary.tune(**CONV, target="rasp4", trials=1, work_dir=tmp_path)
    with pytest.raises(ValueError, match="holds no tuning records"):
        tvm_ternary.op(**CONV, target=AVX2, tuned=tmp_path / "empty")
