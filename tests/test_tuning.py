"""tvm_ternary.tune: MetaSchedule over the rules' knobs, locally and over a tracker of boards."""

from __future__ import annotations

import json
import logging
import shutil

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


def test_tune_with_foreign_handlers_on_metaschedules_logger(tmp_path):
    """An unnamed handler (pytest's log capture, a user's ``addHandler``) and a named one that
    MetaSchedule's dictConfig does not know crashed the second ``tune`` of a process; both
    stay attached and still receive records afterwards."""
    class Recording(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed, named = Recording(), Recording()
    named.set_name("users_own")
    logger.addHandler(unnamed)
    logger.addHandler(named)
    try:
        shape = dict(name="dense", scheme="ternary", data_shape=(1, 64), weight_shape=(8, 64))
        for i in range(2):
            tvm_ternary.tune(**shape, target=AVX2, trials=1, work_dir=tmp_path / str(i), seed=i)
            assert len(measured(tmp_path / str(i))) == 1
        logger.warning("after tuning")
        assert unnamed.messages[-1] == named.messages[-1] == "after tuning"
    finally:
        logger.removeHandler(unnamed)
        logger.removeHandler(named)


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


DENSE = dict(name="dense", scheme="ternary", data_shape=(1, 64), weight_shape=(8, 64))


@pytest.fixture(scope="module")
def dense_tuned(tmp_path_factory):
    """A tuning directory with one record: DENSE on AVX2."""
    return tvm_ternary.tune(**DENSE, target=AVX2, trials=1, work_dir=tmp_path_factory.mktemp("dense"), seed=0)


def test_a_missing_tuning_record_is_logged_and_a_found_one_is_not(dense_tuned, caplog):
    with caplog.at_level(logging.WARNING, logger="tvm_ternary"):
        assert tvm_ternary.op(**DENSE, target=AVX2, tuned=dense_tuned).tuned
        assert not tvm_ternary.op("dense", "ternary", (1, 96), (8, 96), target=AVX2, tuned=dense_tuned).tuned
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tvm_ternary")] == [
        f"dense[ternary]: no tuning record for this operator and target (llvm mcpu=haswell (x86_64)) in "
        f"{dense_tuned}; the hand schedule is used"]


def test_tuning_more_into_a_directory_recompiles_its_kernels(dense_tuned, tmp_path):
    """More records (appended as ``tune`` appends them; here a copy of the first, instead of a
    second tuning run) make the next ``op`` compile again instead of reusing its cache."""
    work_dir = shutil.copytree(dense_tuned, tmp_path / "more")
    first = tvm_ternary.op(**DENSE, target=AVX2, tuned=work_dir)
    assert first.tuned and tvm_ternary.op(**DENSE, target=AVX2, tuned=work_dir).executable is first.executable
    with open(work_dir / "database_tuning_record.json", "r+") as fh:
        fh.write(fh.readlines()[-1])
    assert len(records(work_dir)) == 2
    again = tvm_ternary.op(**DENSE, target=AVX2, tuned=work_dir)
    assert again.tuned and again.executable is not first.executable
