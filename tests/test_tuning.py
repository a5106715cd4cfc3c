"""tvm_ternary.tune and tune_model: MetaSchedule over the rules' knobs, locally and over a tracker of
boards; build(tuned=...)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from torch import nn
from tvm import relax

import tvm_ternary
from tvm_ternary import schedules, tuning
from tvm_ternary.emulator import Board, Tracker
from tvm_ternary.build import float_ops, lower_float_ops
from tvm_ternary.rewrite import rewrite_quantized

from .conftest import AVX2, AVX512, RASP4
from .test_rewrite import calls

CONV = dict(name="conv2d", scheme="ternary", data_shape=(1, 40, 9, 9), weight_shape=(16, 40, 3, 3), padding=1)


def records(work_dir) -> list:
    """``[trace, run_secs, target, args]`` of each record (JSON lines ``[workload, record]``)."""
    with open(work_dir / "database_tuning_record.json") as fh:
        return [json.loads(line)[1] for line in fh]


def hand_records(work_dir) -> list:
    """Records of the hand schedule: a trace without sampling decisions (``[insts, decisions]``)."""
    return [r for r in records(work_dir) if not r[0][1]]


def measured(work_dir) -> list[float]:
    """Run times of the records that built and ran (MetaSchedule stores 1e10 for failures)."""
    return [min(r[1]) for r in records(work_dir) if r[1] and min(r[1]) < 1e9]


def check(f, rng):
    x = f.spec.scheme.activation.sample(rng, f.spec.data_shape)
    w = f.spec.scheme.weight.sample(rng, f.spec.weight_shape)
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))


def test_tune_locally_resume_and_apply(tmp_path, rng):
    work_dir = tvm_ternary.tune(**CONV, target=AVX2, trials=4, work_dir=tmp_path / "t", seed=0)
    assert len(records(work_dir)) == 5 and len(measured(work_dir)) == 5     # the hand schedule and 4 candidates
    assert len(hand_records(work_dir)) == 1
    assert json.loads((work_dir / "tuning.json").read_text())["emulated"] is False
    tvm_ternary.tune(**CONV, target=AVX2, trials=3, work_dir=work_dir, seed=1)        # resumes
    assert len(records(work_dir)) == 8 and len(hand_records(work_dir)) == 1    # the hand schedule measured once
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
            assert len(measured(tmp_path / str(i))) == 2       # the hand schedule and one candidate
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
        assert len(measured(work_dir)) == 5                  # the hand schedule and 4 candidates ran on the boards
        assert all(r[2]["mcpu"] == "cortex-a72" for r in records(work_dir))
        assert json.loads((work_dir / "tuning.json").read_text())["emulated"] is True      # says so
        with pytest.raises(ValueError, match="do not mix them with real measurements"):
            tvm_ternary.tune(**shape, target=AVX2, trials=1, work_dir=work_dir)
        f = tvm_ternary.op(**shape, target="rasp4", tuned=work_dir, remote=remote)
        assert f.tuned
        check(f, rng)


def test_guided_search_measures_what_the_cost_model_ranks_best(tmp_path, rng):
    """``search="guided"``: the XGBoost model ranks pools of draws after a random warm-up;
    records go into the same database, the hand schedule among them, and apply as usual."""
    work_dir = tvm_ternary.tune(**CONV, target=AVX2, trials=12, work_dir=tmp_path / "g", seed=0, search="guided")
    assert len(hand_records(work_dir)) == 1 and 2 <= len(measured(work_dir)) <= 13
    traces = [json.dumps(r[0][1]) for r in records(work_dir)]
    assert len(set(traces)) == len(traces)                  # never the same candidate twice
    f = tvm_ternary.op(**CONV, target=AVX2, tuned=work_dir)
    assert f.tuned
    check(f, rng)
    with pytest.raises(ValueError, match=r"tune: search must be one of \('random', 'guided', 'distinct'\), got 'xgb'"):
        tvm_ternary.tune(**CONV, target=AVX2, trials=1, work_dir=work_dir, search="xgb")


def test_tune_errors(tmp_path):
    with pytest.raises(ValueError, match="tune: trials must be an int >= 1, got 0"):
        tvm_ternary.tune(**CONV, trials=0, work_dir=tmp_path)
    with pytest.raises(ValueError, match="goes through a tracker"):
        tvm_ternary.tune(**CONV, target="rasp4", trials=1, work_dir=tmp_path, remote="127.0.0.1:9090")
    with pytest.raises(RuntimeError, match="cannot measure .* here"):
        tvm_ternary.tune(**CONV, target="rasp4", trials=1, work_dir=tmp_path)
    with pytest.raises(ValueError, match="holds no tuning records"):
        tvm_ternary.op(**CONV, target=AVX2, tuned=tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "tuning.json").write_text(json.dumps({"target": "llvm -mcpu=haswell", "measured_on": "this host",
                                                   "emulated": False}))
    with pytest.raises(ValueError, match="tune: .*other holds records for the target 'llvm -mcpu=haswell', not "
                                         "'.*': a build for one would use the other's records"):
        tvm_ternary.tune(**CONV, target="host", trials=1, work_dir=other)


DENSE = dict(name="dense", scheme="ternary", data_shape=(1, 64), weight_shape=(8, 64))


@pytest.fixture(scope="module")
def dense_tuned(tmp_path_factory):
    """A tuning directory with two records: DENSE on AVX2, its hand schedule and one candidate."""
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
    assert len(records(work_dir)) == 3
    again = tvm_ternary.op(**DENSE, target=AVX2, tuned=work_dir)
    assert again.tuned and again.executable is not first.executable


def small_model(first_last: str = "int8"):
    """(quantized model, input): two ternary 3x3 conv layers between an int8 stem and classifier."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    return tvm_ternary.quantize(net, "ternary", x, first_last=first_last), x


def run_built(ex, x: torch.Tensor) -> np.ndarray:
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()


def data_stage_models() -> list:
    """(quantized model, input) pairs whose data stages and float operators take each branch
    of their rules. The first: a 3-channel stride-2 first layer (pack by column phase + patch
    gather), a max pool, an 8-channel layer on rows of 77 values (more than one vector), a
    16-channel layer fed by the previous kernel (the gather alone), a mean. The second: an
    int8 stem (quantize to bytes) writing 64 channel-blocked channels that a ternary layer
    packs (pack from a blocked input)."""
    torch.manual_seed(0)
    first = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    second = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1),
                           nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(64, 10)).eval()
    x, y = torch.randn(2, 3, 7, 150), torch.randn(1, 3, 5, 40)
    return [(tvm_ternary.quantize(first, "ternary", x, first_last="same"), x),
            (tvm_ternary.quantize(second, "ternary", y), y)]


def test_sampled_schedules_of_data_stages_and_float_operators_equal_the_hand_ones(rng):
    """Points of the search spaces of the quantize-and-pack stages, patch gathers and float
    operators (up to 6 distinct ones per function, of those 39 seeds draw) compute what the
    hand schedule computes, bit for bit, on random inputs."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    target = tvm_ternary.target(AVX2)
    stages = []
    for model, x in data_stage_models():
        tasks, _ = tuning.model_tasks(tvm_ternary.from_torch(model, x), target)
        for name, func in tasks.items():
            if name.startswith("tvm_ternary") and "_quantize" not in name and "_gather" not in name:
                continue                                   # a kernel: test_schedules samples those
            workload = tuning._workload(func)
            sch = tvm.s_tir.Schedule(workload)
            blocks = tuple(sorted(sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))))
            stages.append((name, blocks, len(sch.get_loops(sch.get_sblock("pack"))) if "pack" in blocks else 0))
            args = []
            for info in ArgInfo.from_prim_func(func):
                shape, dtype = [int(d) for d in info.shape], str(info.dtype)
                values = rng.standard_normal(shape) * 3 if "float" in dtype else rng.integers(-3, 4, shape)
                args.append(tvm.runtime.tensor(values.astype(dtype)))

            def output(tunable: bool, seed: int | None = None) -> np.ndarray:
                workload = tuning._workload(func)
                sch = tvm.s_tir.Schedule(workload, seed=seed)
                schedules.schedule_in_place(sch, target, tunable)
                args[-1].copyfrom(np.zeros(args[-1].shape, args[-1].dtype))
                tvm.compile(sch.mod, target=target)["main"](*args)
                return args[-1].numpy().copy()

            hand = output(False)
            samples = {}                     # distinct points of the space, by their module's hash
            for seed in range(1, 40):
                workload = tuning._workload(func)
                sample = tvm.s_tir.Schedule(workload, seed=seed)
                schedules.schedule_in_place(sample, target, True)
                samples.setdefault(tvm_ffi.structural_hash(sample.mod), seed)
            assert len(samples) >= 2, f"{name}: its space has one point"
            for seed in list(samples.values())[:6]:
                np.testing.assert_array_equal(output(True, seed), hand, err_msg=f"{name}, seed {seed}")
    assert {(blocks, loops) for _, blocks, loops in stages} >= {
        (("layout", "levels"), 0), (("bits", "chunk", "pack"), 6), (("patches",), 0),
        (("pack", "patches"), 7), (("pack", "patches"), 6)}, stages
    assert {name for name, _, _ in stages} >= {"max_pool2d", "mean", "reshape"}


@pytest.fixture(scope="module")
def model_tuned(tmp_path_factory):
    """A small model tuned for AVX2 with 2 candidates per kernel, and its results."""
    model, x = small_model()
    mod = tvm_ternary.from_torch(model, x)
    work_dir = tmp_path_factory.mktemp("model")
    return model, x, mod, work_dir, tvm_ternary.tune_model(mod, AVX2, work_dir, trials=2, seed=0)


def test_tune_model_tunes_every_function_build_compiles_with_knobs(model_tuned, capsys):
    """The kernels, the conv2d quantize-and-pack stages and the float operator Relax lowers
    are tasks; the dense layer's packing (the generic rule's, no knobs) is not."""
    model, x, mod, work_dir, results = model_tuned
    kernels = calls(rewrite_quantized(mod, tvm_ternary.target(AVX2)))["tir:kernel"]
    assert kernels == 4                                   # int8 stem, two ternary convs, int8 classifier
    assert sorted(r.name for r in results) == sorted([
        "tvm_ternary_conv2d_int8", "tvm_ternary_conv2d_ternary", "tvm_ternary_conv2d_ternary1",
        "tvm_ternary_dense_int8", "tvm_ternary_conv2d_int8_quantize", "tvm_ternary_conv2d_ternary_quantize",
        "reshape"])
    for r in results:                                     # the hand schedule is a candidate: never slower
        assert r.trials == 2 and r.calls == 1 and 0 < r.tuned <= r.hand
    assert len(hand_records(work_dir)) == 7 and len(measured(work_dir)) == 7 * 3


def test_model_tasks_hand_schedules_are_builds(model_tuned):
    """Each task's hand record is the schedule ``build`` gives the function without records:
    the search space of a task is its build-time rule's."""
    _, _, mod, _, _ = model_tuned
    target = tvm_ternary.target(AVX2)
    tasks, _ = tuning.model_tasks(mod, target)
    built = {}
    rewrite_quantized(mod, target, lambda func, role: built.setdefault(
        tvm_ffi.structural_hash(func), schedules.schedule(func, target, role=role)))
    lowered = lower_float_ops(rewrite_quantized(mod, target), target)
    for func in float_ops(lowered).values():
        built[tvm_ffi.structural_hash(func)] = schedules.schedule(func, target, role=schedules.FLOAT_OP)
    for name, func in tasks.items():
        workload = tuning._workload(func)
        sch = tvm.s_tir.Schedule(workload)
        schedules.schedule_in_place(sch, target, tunable=False)
        tvm.ir.assert_structural_equal(sch.mod["main"].without_attr("global_symbol"),
                                       built[tvm_ffi.structural_hash(func)].mod["main"].without_attr("global_symbol"))


def test_build_with_tuning_records_uses_them_and_stays_exact(model_tuned, caplog):
    model, x, mod, work_dir, _ = model_tuned
    with caplog.at_level(logging.INFO, logger="tvm_ternary.build"):
        ex = tvm_ternary.build(mod, AVX2, tuned=work_dir)
    assert any("7 of 9 functions use tuning records" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_array_equal(run_built(ex, x), expected)            # integer end to end: bit-identical
    other, _ = small_model("same")            # a ternary stem and classifier: no records, the hand schedules
    with caplog.at_level(logging.INFO, logger="tvm_ternary.build"):
        ex = tvm_ternary.build(tvm_ternary.from_torch(other, x), AVX2, tuned=work_dir)
    used = int(re.search(r"build: (\d) of 9 functions use", caplog.records[-1].getMessage()).group(1))
    assert 0 < used < 7
    with torch.no_grad():
        np.testing.assert_array_equal(run_built(ex, x), other(x).numpy())


def test_ship_records_keeps_the_best_record_of_each_kernel(model_tuned, tmp_path, caplog):
    model, x, mod, work_dir, results = model_tuned
    dest = tmp_path / "shipped"
    assert tuning.ship_records(work_dir, dest, "a test CPU") == 7
    shipped = records(dest)
    assert len(shipped) == 7 and len(records(work_dir)) == 21
    assert sorted(float(np.mean(r[1])) for r in shipped) == pytest.approx(sorted(r.tuned for r in results))
    assert json.loads((dest / "tuning.json").read_text()) == {"target": str(tvm_ternary.target(AVX2)),
                                                               "measured_on": "a test CPU", "emulated": False}
    with caplog.at_level(logging.INFO, logger="tvm_ternary.build"):
        ex = tvm_ternary.build(mod, AVX2, tuned=dest)
    assert "7 of 9 functions use tuning records" in caplog.records[-1].getMessage()
    with torch.no_grad():
        np.testing.assert_array_equal(run_built(ex, x), model(x).numpy())
    assert tuning.ship_records(work_dir, dest, "again") == 7 and len(records(dest)) == 7     # replaces, not adds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped"]
    emulated = tmp_path / "emulated"
    shutil.copytree(work_dir, emulated)
    (emulated / "tuning.json").write_text(json.dumps({"target": "x", "measured_on": "b", "emulated": True}))
    with pytest.raises(ValueError, match="was measured on emulated boards; only records measured on real hardware"):
        tuning.ship_records(emulated, tmp_path / "no", "a test CPU")
    (emulated / "tuning.json").unlink()
    with pytest.raises(ValueError, match="has no tuning.json saying what measured its records"):
        tuning.ship_records(emulated, tmp_path / "no", "a test CPU")


def test_shipped_records_are_there_for_each_x86_isa_and_not_for_the_pi():
    for target, isa in ((AVX2, "avx2"), (AVX512, "avx512")):
        path = tuning.records_dir("shipped", tvm_ternary.target(target))
        assert path == tuning.SHIPPED_RECORDS / isa and (path / "database_tuning_record.json").exists()
        assert json.loads((path / "tuning.json").read_text())["emulated"] is False
    assert tuning.records_dir("my_dir", tvm_ternary.target(AVX2)) == Path("my_dir")
    with pytest.raises(ValueError, match=r"tuned='shipped': no records ship for neon targets .* they ship for "
                                         r"\['avx2', 'avx512'\]"):
        tvm_ternary.build(tvm_ternary.from_torch(nn.Linear(4, 2).eval(), torch.randn(1, 4)), RASP4, tuned="shipped")


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("scheme", ["ternary", "fatnn", "w2a2", "w1a1"])
def test_shipped_records_cover_every_task_of_resnet18(scheme, target):
    """``build(..., tuned="shipped")`` finds a record for every function of ResNet-18 at
    224x224 with the default quantize whose schedule has knobs: 19 kernels, and 12 quantize
    stages and float operators on AVX-512, 15 on AVX2 (its channel blocks are narrower, so
    more layout changes; checked on the functions, before compiling). All but the int8
    stem's quantize stage, which holds the calibration scale of the model it was tuned for
    (the benchmarks' ResNet-18, not this one)."""
    from tvm_ternary.models import ResNet18
    net = ResNet18(1000).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mod = tvm_ternary.from_torch(tvm_ternary.quantize(net, scheme, x), x)
    target = tvm_ternary.target(target)
    tasks, _ = tuning.model_tasks(mod, target)
    scheduler = tuning.TunedScheduler(target, "shipped")
    missing = []
    for name, func in tasks.items():
        tuned = scheduler.tuned
        scheduler(func, schedules.FLOAT_OP if not name.startswith("tvm_ternary") else "")
        if scheduler.tuned == tuned:
            missing.append(name)
    assert len(tasks) == {"avx512": 31, "avx2": 34}[schedules.isa_of(target).name]
    assert missing == ["tvm_ternary_conv2d_int8_quantize"]     # its code holds this model's calibration scale


def test_a_killed_tuning_run_leaves_a_directory_that_resumes(model_tuned, tmp_path):
    """Kill ``tune_model`` in a subprocess once it has written records (and cut its last line in
    half, as a kill during a write would): the directory loads, tuning resumes into it, and
    ``build`` applies it."""
    _, x, mod, _, _ = model_tuned
    work_dir = tmp_path / "killed"
    script = (f"import torch, tvm_ternary, tests.test_tuning as t\n"
              f"model, x = t.small_model()\n"
              f"tvm_ternary.tune_model(tvm_ternary.from_torch(model, x), {AVX2!r}, {str(work_dir)!r}, trials=50)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (work_dir / "database_tuning_record.json").exists() or \
                (work_dir / "database_tuning_record.json").read_text().count("\n") < 6:   # lines being written
            assert proc.poll() is None and time.time() < deadline, "the tuning process ended or stalled"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    written = len(records(work_dir))
    with open(work_dir / "database_tuning_record.json", "a") as fh:
        fh.write('[0, [[["GetSBlock"')                                     # a record cut in the middle
    with pytest.raises(ValueError, match="ends in a half-written line"):   # reading does not rewrite it
        tvm_ternary.build(mod, AVX2, tuned=work_dir)
    tvm_ternary.tune_model(mod, AVX2, work_dir, trials=1, seed=1)
    assert len(records(work_dir)) >= written + 7                           # one more candidate per function
    tvm_ternary.build(mod, AVX2, tuned=work_dir)


def test_tune_model_over_a_tracker_of_emulated_boards(tmp_path):
    """``tune_model`` measures a model's kernels on the boards behind a tracker (cross-compiled
    here); the directory says it is emulated, and the model built with its records runs on a
    board and equals PyTorch."""
    model, x = small_model()
    mod = tvm_ternary.from_torch(model, x)
    with Tracker() as tracker, Board(tracker=tracker.address, key="rasp4"), \
            Board(tracker=tracker.address, key="rasp4"):
        remote = {"tracker": tracker.address, "key": "rasp4"}
        results = tvm_ternary.tune_model(mod, "rasp4", tmp_path / "pi", trials=1, remote=remote, seed=0)
        assert len(results) == 7 and len(measured(tmp_path / "pi")) == 14      # hand + 1 candidate per function
        assert all(r[2]["mcpu"] == "cortex-a72" for r in records(tmp_path / "pi"))
        assert json.loads((tmp_path / "pi" / "tuning.json").read_text())["emulated"] is True
        path = tvm_ternary.export(tvm_ternary.build(mod, "rasp4", tuned=tmp_path / "pi"), str(tmp_path / "m.so"),
                                  "rasp4")
        session = tvm_ternary.Remote.parse(remote).connect()
        session.upload(path)
        dev = session.cpu(0)
        out = relax.VirtualMachine(session.load_module("m.so"), dev)["main"](tvm.runtime.tensor(x.numpy(), dev))
        out = out.numpy()                                     # while the board still runs
    with torch.no_grad():
        np.testing.assert_array_equal(out, model(x).numpy())


def test_tune_model_tunes_only_the_functions_asked_for(tmp_path):
    model, x = small_model()
    results = tvm_ternary.tune_model(tvm_ternary.from_torch(model, x), AVX2, tmp_path, trials=1, seed=0,
                                     functions=["quantize", "reshape"])
    assert sorted(r.name for r in results) == ["reshape", "tvm_ternary_conv2d_int8_quantize",
                                               "tvm_ternary_conv2d_ternary_quantize"]
    assert len(hand_records(tmp_path)) == 3 and len(measured(tmp_path)) == 6


def test_a_resumed_search_measures_only_schedules_the_directory_lacks(tmp_path):
    """Guided tuning into a directory skips the schedules it holds: over three calls no
    schedule is measured twice, and the last call measures the 2 schedules left of the
    space's 8, then stops."""
    model, x = small_model()
    mod = tvm_ternary.from_torch(model, x)
    runs = [tvm_ternary.tune_model(mod, AVX2, tmp_path, trials=trials, seed=seed, functions=["ternary_quantize"])
            for seed, trials in ((0, 3), (1, 3), (2, 20))]
    assert [r.trials for (r,) in runs] == [3, 3, 2]
    database = tvm.s_tir.meta_schedule.database.JSONDatabase(work_dir=str(tmp_path))
    keys = []
    for record in database.get_all_tuning_records():
        sch = tvm.s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=True)
        keys.append(tvm_ffi.structural_hash(sch.mod))
    assert len(keys) == len(set(keys)) == 1 + 3 + 3 + runs[2][0].trials


def test_tune_model_errors(tmp_path):
    model, x = small_model()
    mod = tvm_ternary.from_torch(model, x)
    with pytest.raises(ValueError, match="tune_model: trials must be an int >= 1, got 0"):
        tvm_ternary.tune_model(mod, AVX2, tmp_path, trials=0)
    with pytest.raises(ValueError, match=r"tune_model: no function's name contains any of \['nothing'\]; the "
                                         r"functions with knobs are \['reshape', 'tvm_ternary_conv2d_int8'"):
        tvm_ternary.tune_model(mod, AVX2, tmp_path, trials=1, functions=["nothing"])
    with pytest.raises(TypeError, match="tune_model: functions must be a list of strings, not a string"):
        tvm_ternary.tune_model(mod, AVX2, tmp_path, trials=1, functions="quantize")
    identity = tvm_ternary.from_torch(nn.Identity().eval(), torch.randn(1, 4))
    with pytest.raises(ValueError, match="tune_model: the module has no function whose schedule has knobs"):
        tvm_ternary.tune_model(identity, AVX2, tmp_path, trials=1)
    with pytest.raises(ValueError, match="holds no tuning records"):
        tvm_ternary.build(mod, AVX2, tuned=tmp_path / "empty")
