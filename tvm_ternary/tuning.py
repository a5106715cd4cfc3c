"""Autotuning of the kernels with MetaSchedule, over the hand-written rules' own knobs.

The search space is the schedule rule of the kernel with ``tunable=True`` (pixel tile,
parallel fuse, unroll depth, ...: :func:`tvm_ternary.schedules.schedule_in_place`). The
strategy is MetaSchedule's ``replay-func``: each candidate is a fresh run of the rule with
new samples, all measured. (Evolutionary search with the XGBoost model mutates recorded
traces instead, and the rules take Python decisions on sampled values, which a mutated
trace cannot replay; the spaces are small enough to sample.) Records go to a JSON
database in ``work_dir``; tuning again with the same directory adds to it, and the best
record over all runs is the one used.
Candidates run on this host, or on boards behind a TVM RPC tracker
(``remote={"tracker": "host:port", "key": "rasp4"}``; cross-compiled here).

>>> tvm_ternary.tune("conv2d", "ternary", (1, 64, 56, 56), (64, 64, 3, 3), padding=1,
...                  target="host", trials=64, work_dir="tuning")
>>> f = tvm_ternary.op(..., target="host", tuned="tuning")      # f.tuned is True
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import psutil
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from . import schedules
from .diagnostics import warn_if_generic_target
from .remote import CROSS_COMPILERS, Remote, RemoteLike, export
from .targets import TargetLike, host_cannot_run, resolve_target, target_arch

BOARD_CORES = {"cortex-a72": 4, "cortex-a53": 4}
"""Cores of the boards' CPUs (MetaSchedule's targets must say how many cores run a kernel)."""


_MS_LOGGER = "tvm.s_tir.meta_schedule"


@contextmanager
def _foreign_handlers_detached() -> Iterator[None]:
    """Take the handlers that are not MetaSchedule's own off its logger for the duration.

    ``tune_tir`` rebuilds its logging with ``logging.config.dictConfig`` from the *names* of
    the handlers on the ``tvm.s_tir.meta_schedule`` logger: an unnamed handler (pytest's log
    capture, a user's ``addHandler(StreamHandler())``) crashes it with
    ``AttributeError: 'NoneType' object has no attribute 'format'``, a named one that
    dictConfig does not know with ``ValueError``. They are put back afterwards."""
    logger = logging.getLogger(_MS_LOGGER)
    foreign = [h for h in logger.handlers if not (h.get_name() or "").startswith(_MS_LOGGER + ".")]
    for handler in foreign:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            logger.addHandler(handler)


def _workload(kernel: tvm.tirx.PrimFunc) -> tvm.IRModule:
    return tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")})


RECORDS_FILE = "database_tuning_record.json"
"""The file of a tuning directory that holds its records (MetaSchedule's ``JSONDatabase``)."""


def database_state(work_dir: str | os.PathLike) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``work_dir``'s records, None when it has none: tuning more
    into the directory changes it, so caches of tuned kernels key on it."""
    try:
        stat = (Path(work_dir) / RECORDS_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def tuned_schedule(kernel: tvm.tirx.PrimFunc, target: Target, work_dir: str) -> tvm.s_tir.Schedule | None:
    """The best record of ``work_dir`` for ``kernel``, applied; None when it has none."""
    if not (Path(work_dir) / RECORDS_FILE).exists():
        raise ValueError(f"tuned: {work_dir} holds no tuning records (run tvm_ternary.tune first)")
    database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False)
    return ms.tir_integration.compile_tir(database, _workload(kernel), _tuning_target(target))


def _tuning_target(target: Target) -> Target:
    """``target`` with ``num-cores`` (required by MetaSchedule): the board's, else this host's."""
    if "num-cores" in target.attrs:
        return target
    cores = BOARD_CORES.get(str(target.attrs.get("mcpu", "")), None) if host_cannot_run(target) else None
    config = dict(target.export())
    config["num-cores"] = cores or psutil.cpu_count(logical=False) or 1
    return Target(config)


def export_aarch64(mod) -> str:
    """MetaSchedule builder export for aarch64 boards: link here with the cross compiler
    (a board's runtime cannot link a ``.tar`` itself). Runs in the builder's worker."""
    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    return export(mod, path, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})


def _runner(target: Target, remote: RemoteLike | None, repeat: int):
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=repeat, min_repeat_ms=0, enable_cpu_cache_flush=False)
    if remote is None:
        reason = host_cannot_run(target)
        if reason:
            raise RuntimeError(f"tune: cannot measure {target} here ({reason}); give remote={{'tracker': ..., 'key': ...}}")
        return ms.runner.LocalRunner(timeout_sec=120, evaluator_config=evaluator)
    r = Remote.parse(remote)
    if not r.tracker:
        raise ValueError("tune: tuning over RPC goes through a tracker (many boards, one key): "
                         "remote={'tracker': 'host:port', 'key': ...}")
    host, _, port = r.address.rpartition(":")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=r.key,
                                 session_timeout_sec=int(r.session_timeout))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def tune(name: str, scheme: str, data_shape: Sequence[int], weight_shape: Sequence[int],
         stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, target: TargetLike = "host",
         epilogue: str = "int32", next_padding: int | Sequence[int] | None = None, *, trials: int = 64,
         work_dir: str | os.PathLike = "tvm_ternary_tuning", remote: RemoteLike | None = None,
         seed: int | None = None, dilation: int | Sequence[int] = 1, **scheme_params) -> Path:
    """Tune the kernel of ``tvm_ternary.op(name, scheme, ...)`` for ``target`` with
    MetaSchedule; ``trials`` more measured candidates go into ``work_dir`` (resumable).

    Returns ``work_dir``; pass it as ``op(..., tuned=work_dir)``. Raises ``RuntimeError``
    when the target cannot be measured (a board target without a tracker), ``ValueError``
    for bad arguments (those of :func:`tvm_ternary.op`, ``trials < 1``).
    """
    from .api import make_spec
    if trials < 1:
        raise ValueError(f"tune: trials must be >= 1, got {trials}")
    target = resolve_target(target)
    spec = make_spec(name, scheme, data_shape, weight_shape, stride, padding, target, epilogue, next_padding,
                     dilation=dilation, **scheme_params)
    arch = target_arch(target)
    cross = remote is not None or host_cannot_run(target)
    if cross and arch not in CROSS_COMPILERS:
        raise RuntimeError(f"tune: no cross compiler for {arch} targets")
    if remote is None:
        warn_if_generic_target(target, f"tune {spec.where}")
    runner = _runner(target, remote, repeat=3)
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=300,
                                      f_export=export_aarch64 if arch == "aarch64" and cross else None)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    space = ms.space_generator.ScheduleFn(lambda sch: schedules.schedule_in_place(sch, target, True))
    logging.getLogger(_MS_LOGGER).setLevel(logging.WARNING)
    with _foreign_handlers_detached():
        ms.tune_tir(_workload(spec.kernel_prim_func()), _tuning_target(target), str(work_dir),
                    max_trials_global=trials, num_trials_per_iter=min(trials, 16), builder=builder,
                    runner=runner, database=database, cost_model="random", space=space,
                    strategy="replay-func", num_tuning_cores=1, seed=seed)
    return work_dir
