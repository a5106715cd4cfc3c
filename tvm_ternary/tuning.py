"""Autotuning with MetaSchedule, over the hand-written rules' own knobs.

The search space of a function is its schedule rule with ``tunable=True``
(:func:`tvm_ternary.schedules.schedule_in_place`): for a kernel the pixel tile,
output-channel blocks per tile, parallel fuse, order of the reduction loops and unroll
depth; for a quantize-and-pack stage or patch gather the vector length along rows and/or
the unroll depth (:class:`~tvm_ternary.schedules.ActivationPack`); for a float operator
the vector run and the unroll depth. The hand schedule is measured first, as a
record. Then ``search="guided"`` (the default) uses our :class:`_GuidedSearch`, which
measures the draws MetaSchedule's XGBoost cost model ranks best, and ``search="random"``
MetaSchedule's ``replay-func`` (each candidate a fresh run of the rule with new samples,
all measured); ``search="distinct"`` draws at random but never measures a schedule twice;
``benchmarks/tuning.py`` compares the three. (MetaSchedule's evolutionary
search mutates recorded traces instead, and the rules take Python decisions on sampled
values, which a mutated trace cannot replay.) Records go to a JSON database in
``work_dir``; tuning again with the same directory adds to it, and the best record over
all runs is the one used. :func:`tune_model` tunes every function of a model that has knobs;
``build(..., tuned=work_dir)`` applies the records, ``tuned="shipped"`` those that ship
for the target's ISA class (:func:`ship_records`). Candidates run on this host, or on
boards behind a TVM RPC tracker (``remote={"tracker": "host:port", "key": "rasp4"}``;
cross-compiled here).

>>> tvm_ternary.tune("conv2d", "ternary", (1, 64, 56, 56), (64, 64, 3, 3), padding=1,
...                  target="host", trials=64, work_dir="tuning")
>>> f = tvm_ternary.op(..., target="host", tuned="tuning")      # f.tuned is True
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import psutil
import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target
from tqdm import tqdm

from . import schedules
from .diagnostics import warn_if_generic_target
from .remote import CROSS_COMPILERS, Remote, RemoteLike, export
from .targets import TargetLike, describe, host_cannot_run, resolve_target, target_arch

_LOG = logging.getLogger(__name__)

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


WORKLOADS_FILE = "database_workload.json"
"""The file of a tuning directory that holds the tuned functions (MetaSchedule's ``JSONDatabase``)."""


def _open_records(work_dir: str | os.PathLike) -> ms.database.JSONDatabase:
    if not (Path(work_dir) / RECORDS_FILE).exists():
        raise ValueError(f"tuned: {work_dir} holds no tuning records (run tvm_ternary.tune or tune_model first)")
    if _half_written(work_dir):
        raise ValueError(f"tuned: a database file of {work_dir} ends in a half-written line (a tuning process was "
                         f"killed, or is still writing); the next tune or tune_model into it repairs it")
    return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False)


def _half_written(work_dir: str | os.PathLike) -> list[Path]:
    """The database files of ``work_dir`` whose last line is not a whole JSON record."""
    broken = []
    for name in (WORKLOADS_FILE, RECORDS_FILE):
        path = Path(work_dir) / name
        lines = path.read_text().splitlines() if path.exists() else []
        try:
            if lines:
                json.loads(lines[-1])
        except json.JSONDecodeError:
            broken.append(path)
    return broken


DESCRIPTION_FILE = "tuning.json"
"""What a tuning directory's records were measured on: ``{"target": ..., "measured_on":
"this host" | "<remote>", "emulated": bool}``. Records from emulated boards say so here:
their timings are not a board's and must not be shipped as its records."""


def _describe(work_dir: Path, target: Target, remote: RemoteLike | None) -> None:
    """Write (or check) ``work_dir``'s :data:`DESCRIPTION_FILE`; refuse to mix emulated and
    real measurements in one directory."""
    emulated = remote is not None and Remote.parse(remote).is_emulated()
    description = {"target": str(target), "measured_on": "this host" if remote is None else str(Remote.parse(remote)),
                   "emulated": emulated}
    path = work_dir / DESCRIPTION_FILE
    if path.exists():
        before = json.loads(path.read_text())
        if before.get("emulated") != emulated:
            raise ValueError(f"tune: {work_dir} holds records measured on {'an emulated' if before.get('emulated') else 'a real'}"
                             f" board or host; do not mix them with {'emulated' if emulated else 'real'} measurements "
                             f"(use another work_dir)")
        if before.get("target") != description["target"]:
            raise ValueError(f"tune: {work_dir} holds records for the target {before.get('target')!r}, not "
                             f"{description['target']!r}: a build for one would use the other's records "
                             f"(use another work_dir)")
        return
    path.write_text(json.dumps(description, indent=1) + "\n")


def repair(work_dir: str | os.PathLike) -> int:
    """Drop the line a killed tuning process may have left half-written at the end of each
    database file of ``work_dir`` (records are appended one JSON line at a time), so the
    directory loads and tuning resumes; returns how many lines were dropped (each with a
    warning on the ``tvm_ternary.tuning`` logger). Tuning calls it before it writes; reading
    a directory (``tuned=``) never rewrites it."""
    broken = _half_written(work_dir)
    for path in broken:
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:-1]))
        _LOG.warning("tuning: dropped a half-written last line of %s (a tuning process was killed)", path)
    return len(broken)


SHIPPED = "shipped"
"""``tuned="shipped"`` (:func:`tvm_ternary.build`, :func:`tvm_ternary.op`): the records that
ship with the package for the target's ISA class (:data:`SHIPPED_RECORDS`)."""

SHIPPED_RECORDS = Path(schedules.__file__).parent / "records"
"""The shipped tuning directories, one per ISA class (``records/avx512``, ``records/avx2``,
named as :func:`tvm_ternary.schedules.isa_of` names them), each holding the best record of
every function of the models they were tuned for (:func:`ship_records`)."""


def records_dir(tuned: str | os.PathLike, target: Target) -> Path:
    """The tuning directory that ``tuned=`` names: ``tuned`` itself, or for :data:`SHIPPED`
    the shipped records of ``target``'s ISA class. Raises ``ValueError`` when none ship for it."""
    if not (isinstance(tuned, str) and tuned == SHIPPED):       # a path named "shipped" is a path
        return Path(tuned)
    isa = schedules.isa_of(target).name
    path = SHIPPED_RECORDS / isa
    if not (path / RECORDS_FILE).exists():
        shipped = sorted(p.parent.name for p in SHIPPED_RECORDS.glob(f"*/{RECORDS_FILE}"))
        raise ValueError(f"tuned='shipped': no records ship for {isa} targets ({describe(target)}); they ship for "
                         f"{shipped or 'no ISA'}. Tune your own with tvm_ternary.tune_model")
    return path


def ship_records(work_dir: str | os.PathLike, dest: str | os.PathLike, device: str) -> int:
    """Write the best record of each function of ``work_dir`` into the tuning directory
    ``dest`` (replacing it whole, once the new one is complete), with a :data:`DESCRIPTION_FILE`
    naming ``device``, the CPU that measured them. Only each function's best record ships;
    returns the number of functions.
    Records measured on emulated boards are refused (``ValueError``): their timings are not
    a board's."""
    source = Path(work_dir)
    description = json.loads((source / DESCRIPTION_FILE).read_text()) if (source / DESCRIPTION_FILE).exists() else {}
    if not description:
        raise ValueError(f"ship_records: {source} has no {DESCRIPTION_FILE} saying what measured its records")
    if description.get("emulated"):
        raise ValueError(f"ship_records: {source} was measured on emulated boards; only records measured on real "
                         f"hardware ship")
    database = _open_records(source)
    dest = Path(dest)
    staging = dest.with_name(dest.name + ".new")       # written whole, then put in place
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shipped = ms.database.JSONDatabase(work_dir=str(staging))
    workloads = [records[0].workload for records in _records_by_workload(database).values()]
    for workload in workloads:
        best = database.get_top_k(workload, 1)
        if not best:
            raise ValueError(f"ship_records: a function of {source} has no record that built and ran")
        shipped.commit_tuning_record(ms.database.TuningRecord(
            best[0].trace, shipped.commit_workload(workload.mod), best[0].run_secs, best[0].target,
            best[0].args_info))
    (staging / DESCRIPTION_FILE).write_text(json.dumps(dict(description, measured_on=device), indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return len(workloads)


def _records_by_workload(database: ms.database.Database) -> dict[int, list[ms.database.TuningRecord]]:
    """Every record of ``database`` (failed ones too), by its function's key (:func:`_key`)."""
    grouped: dict[int, list[ms.database.TuningRecord]] = {}
    for record in database.get_all_tuning_records():
        grouped.setdefault(tvm_ffi.structural_hash(record.workload.mod), []).append(record)
    return grouped


def tuned_schedule(kernel: tvm.tirx.PrimFunc, target: Target, work_dir: str) -> tvm.s_tir.Schedule | None:
    """The best record of ``work_dir`` for ``kernel``, applied; None when it has none."""
    return _best_schedule(_open_records(work_dir), kernel, target)


def _best_schedule(database: ms.database.Database, func: tvm.tirx.PrimFunc,
                   target: Target) -> tvm.s_tir.Schedule | None:
    """``func`` scheduled by its best record in ``database``; None when it has none."""
    return ms.tir_integration.compile_tir(database, _workload(func), _tuning_target(target))


class TunedScheduler:
    """Schedules the functions :func:`tvm_ternary.build` compiles (a
    :data:`tvm_ternary.rewrite.Scheduler`): each by the best record of ``work_dir`` (or of
    the shipped records, :data:`SHIPPED`) where it has one, else by its hand-written rule.
    :attr:`functions` counts the distinct functions it scheduled (those without knobs
    included), :attr:`tuned` those it found a record for."""

    def __init__(self, target: Target, work_dir: str | os.PathLike):
        self.target, self.work_dir = target, records_dir(work_dir, target)
        self.database = _open_records(self.work_dir)
        self._seen: dict[int, bool] = {}          # function key -> has a record

    @property
    def functions(self) -> int:
        return len(self._seen)

    @property
    def tuned(self) -> int:
        return sum(self._seen.values())

    def __call__(self, func: tvm.tirx.PrimFunc, role: str) -> tvm.s_tir.Schedule:
        sch = _best_schedule(self.database, func, self.target)
        self._seen[_key(func)] = sch is not None
        return sch if sch is not None else schedules.schedule(func, self.target, role=role)


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
    (a board's runtime cannot link a ``.tar`` itself)."""
    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    return export(mod, path, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})


MIN_REPEAT_MS = 50
"""Each measurement repeats a candidate for at least this long: back-to-back calls keep the
thread pool awake, as the kernels of a model find it (with a few calls, a parallel kernel's
wake-up alone doubled the measured time of a 30 µs layer)."""


@derived_object
class _Builder(ms.builder.PyBuilder):
    """Builds candidates in this process. MetaSchedule's ``LocalBuilder`` starts a new worker
    for every batch, whose default build function imports ``tvm.s_tir.tensor_intrin`` (19 s
    on the development machine) for a 0.04 s compile. A candidate that fails to build is
    recorded as failed and the search goes on."""

    def __init__(self, f_export: Callable[[tvm.runtime.Module], str] | None = None):
        super().__init__()
        self.f_export = f_export or tvm.get_global_func("s_tir.meta_schedule.builder.default_export")

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        results = []
        for item in build_inputs:
            try:
                results.append(ms.builder.BuilderResult(self.f_export(tvm.tirx.build(item.mod, item.target)), None))
            except Exception as err:  # noqa: BLE001 - any failure of one candidate is that candidate's result
                results.append(ms.builder.BuilderResult(None, f"build failed: {type(err).__name__}: {err}"))
        return results


def _runner(target: Target, remote: RemoteLike | None, repeat: int):
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=repeat, min_repeat_ms=MIN_REPEAT_MS,
                                           enable_cpu_cache_flush=False)
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
         seed: int | None = None, dilation: int | Sequence[int] = 1, search: str = "guided",
         **scheme_params) -> Path:
    """Tune the kernel of ``tvm_ternary.op(name, scheme, ...)`` for ``target`` with
    MetaSchedule; ``trials`` more measured candidates go into ``work_dir`` (resumable).
    ``search`` (:data:`SEARCHES`): ``"guided"`` (the default) measures the draws the XGBoost
    cost model ranks best, ``"random"`` every draw of the rule, ``"distinct"`` random draws
    never measured before.

    Returns ``work_dir``; pass it as ``op(..., tuned=work_dir)``. Raises ``RuntimeError``
    when the target cannot be measured (a board target without a tracker), ``ValueError``
    for bad arguments (those of :func:`tvm_ternary.op`, ``trials < 1``).
    """
    from .api import make_spec
    _check_trials("tune", trials)
    _check_search("tune", search)
    target = resolve_target(target)
    spec = make_spec(name, scheme, data_shape, weight_shape, stride, padding, target, epilogue, next_padding,
                     dilation=dilation, **scheme_params)
    if spec.amx:
        raise ValueError(f"tune {spec.where}: on {describe(target)} the kernel is the AMX one, written as TIR "
                         f"without knobs; there is nothing to tune")
    session = _Session(f"tune {spec.where}", target, work_dir, remote)
    session.tune({"main": spec.kernel_prim_func()}, trials, seed, search=search)
    return session.work_dir


def _check_trials(where: str, trials: int) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"{where}: trials must be an int >= 1, got {trials!r}")


def _check_search(where: str, search: str) -> None:
    if search not in SEARCHES:
        raise ValueError(f"{where}: search must be one of {SEARCHES}, got {search!r}")


class _Session:
    """What every tuning task of one call shares: target, measurement, the database."""

    def __init__(self, where: str, target: Target, work_dir: str | os.PathLike, remote: RemoteLike | None):
        arch = target_arch(target)
        cross = remote is not None or host_cannot_run(target)
        if cross and arch not in CROSS_COMPILERS:
            raise RuntimeError(f"tune: no cross compiler for {arch} targets")
        if remote is None:
            warn_if_generic_target(target, where)
        self.target = target
        self.runner = _runner(target, remote, repeat=3)
        self.builder = _Builder(export_aarch64 if arch == "aarch64" and cross else None)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _describe(self.work_dir, target, remote)
        repair(self.work_dir)
        self.database = ms.database.JSONDatabase(work_dir=str(self.work_dir))

    def tune(self, functions: dict[str, tvm.tirx.PrimFunc], trials: int, seed: int | None,
             bar: tqdm | None = None, search: str = "guided") -> dict[str, int]:
        """Each function's hand schedule (once per database) and ``trials`` measured candidates
        of its rule into the database, all functions in one MetaSchedule task scheduler (round
        robin); ``bar`` advances by one per measured candidate. A function's best record is
        therefore never slower than its hand schedule beyond the noise of one measurement.
        ``search`` is one of :data:`SEARCHES`. Returns the candidates measured per function
        (at most ``trials``: fewer when a guided or distinct search runs out of new ones)."""
        for func in functions.values():
            if self.hand_record(func) is None:
                self._commit_hand(func)
        before = self._records_per_workload()
        mod = tvm.IRModule({name: _workload(func)["main"] for name, func in functions.items()})
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        if bar is not None:
            callbacks.append(_Progress(bar))
        space = ms.space_generator.ScheduleFn(lambda sch: schedules.schedule_in_place(sch, self.target, True))
        logging.getLogger(_MS_LOGGER).setLevel(logging.WARNING)
        with _foreign_handlers_detached():
            ms.tune_tir(mod, _tuning_target(self.target), str(self.work_dir),
                        max_trials_global=trials * len(functions), max_trials_per_task=trials,
                        num_trials_per_iter=min(trials, 16), builder=self.builder, runner=self.runner,
                        database=self.database, space=space,
                        cost_model="random" if search != "guided" else ms.cost_model.XGBModel(
                            num_warmup_samples=WARMUP, verbose_eval=0, num_tuning_cores=1),
                        strategy="replay-func" if search == "random" else _GuidedSearch(self.target,
                                                                                        search == "guided"),
                        task_scheduler="round-robin", measure_callbacks=callbacks, num_tuning_cores=1, seed=seed)
        after = self._records_per_workload()
        return {name: after.get(_key(func), 0) - before.get(_key(func), 0) for name, func in functions.items()}

    def _records_per_workload(self) -> dict[int, int]:
        """Records per function (by :func:`_key`) in the database."""
        return {key: len(records) for key, records in _records_by_workload(self.database).items()}

    def best_record(self, func: tvm.tirx.PrimFunc) -> ms.database.TuningRecord:
        """The fastest record of ``func`` (after :meth:`tune`)."""
        (best,) = self.database.get_top_k(self.database.commit_workload(_workload(func)), 1)
        return best

    def hand_record(self, func: tvm.tirx.PrimFunc) -> ms.database.TuningRecord | None:
        """The record of ``func``'s hand schedule (a trace without sampling decisions), if measured."""
        workload = _workload(func)
        if not self.database.has_workload(workload):
            return None
        records = self.database.get_top_k(self.database.commit_workload(workload), 1 << 20)
        return next((r for r in records if len(r.trace.decisions) == 0), None)

    def _commit_hand(self, func: tvm.tirx.PrimFunc) -> None:
        """Build and measure the hand schedule as MetaSchedule measures a candidate, and record it."""
        workload = _workload(func)
        sch = tvm.s_tir.Schedule(workload)
        schedules.schedule_in_place(sch, self.target, tunable=False)
        target = _tuning_target(self.target)
        (built,) = self.builder.build([ms.builder.BuilderInput(sch.mod, target)])
        if built.error_msg:
            raise RuntimeError(f"tune: the hand schedule does not build: {built.error_msg}")
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        (future,) = self.runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])
        result = future.result()
        if result.error_msg:
            raise RuntimeError(f"tune: the hand schedule does not run: {result.error_msg}")
        self.database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, self.database.commit_workload(workload), result.run_secs, target, args))


SEARCHES = ("random", "guided", "distinct")
"""How candidates are chosen: ``random`` measures every draw of the rule (MetaSchedule's
``replay-func``, which may draw a schedule again); ``distinct`` measures random draws too,
but never one measured before; ``guided`` draws :data:`POOL` times more than it measures,
never one measured before, and measures those MetaSchedule's XGBoost cost model ranks best
(:class:`_GuidedSearch`), the default. Over 4 kernel tasks and 3 seeds
(``benchmarks/tuning.py``) guided came within 3% of random's 64-trial best after 14
trials on average, random after 18 and distinct after 16: within the noise of the
measurement, so the model's own share is not shown on spaces this small."""

POOL = 8
"""Candidates the guided search draws per candidate it measures."""

EXPLORE = 0.25
"""Share of each guided batch drawn at random from the rest of the pool (the model only
knows what it has seen measured)."""

WARMUP = 8
"""Measured candidates before the guided search trusts the model (its first batches are random)."""


@derived_object
class _GuidedSearch(ms.search_strategy.PySearchStrategy):
    """A search strategy over our rules: per batch, :data:`POOL` x batch fresh draws of the
    rule (deduplicated, never one measured before), ranked by the cost model; the best
    ``1 - EXPLORE`` of the batch and a random rest are measured. The first batch is
    :data:`WARMUP` random draws. The task scheduler's measure callbacks update the model
    after each batch. With ``rank=False`` (``search="distinct"``) every batch is random."""

    def __init__(self, target: Target, rank: bool = True):
        super().__init__()
        self.target, self.rank = target, rank

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.rng = np.random.default_rng(int(context.rand_state) & 0x7FFFFFFF)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.max_trials, self.batch = int(max_trials), int(num_trials_per_iter)
        self.cost_model, self.measured = cost_model, 0
        self.measured_keys = self._recorded(database)
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(self.context.mod["main"])

    def _recorded(self, database) -> set[int]:
        """Keys (structural hashes, as :meth:`generate_measure_candidates` computes them) of
        the schedules ``database`` holds for this task, those that failed to build or run
        included: a resumed search does not measure them again."""
        mod = self.context.mod
        if database is None or not database.has_workload(mod):
            return set()
        keys = set()
        for record in _records_by_workload(database).get(tvm_ffi.structural_hash(mod), []):
            sch = tvm.s_tir.Schedule(mod)
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=True)
                if not all(p.apply(sch) for p in self.context.space_generator.postprocs):
                    continue
            except (RuntimeError, ValueError):          # TVM errors are RuntimeErrors
                continue                          # a record of another rule version: not in this space
            keys.add(tvm_ffi.structural_hash(sch.mod))
        return keys

    def post_tuning(self) -> None:
        pass

    def generate_measure_candidates(self):
        count = min(self.batch, self.max_trials - self.measured)
        if self.rank and self.measured < WARMUP:
            count = min(count, WARMUP - self.measured)       # a short random batch, then the model ranks
        if count <= 0:
            return None
        pool, keys = [], []
        for _ in range(POOL * count):
            if not self.rank and len(pool) == count:
                break                                 # distinct: no ranking, so no larger pool
            sch = tvm.s_tir.Schedule(self.context.mod, seed=int(self.rng.integers(1, 2**31 - 1)))
            try:
                schedules.schedule_in_place(sch, self.target, True)
                if not all(p.apply(sch) for p in self.context.space_generator.postprocs):
                    continue
            except (RuntimeError, ValueError):          # TVM errors are RuntimeErrors
                continue
            key = tvm_ffi.structural_hash(sch.mod)
            if key not in self.measured_keys and key not in keys:
                keys.append(key)
                pool.append(ms.search_strategy.MeasureCandidate(sch, self.args_info))
        if not pool:
            return None
        if self.rank and self.measured >= WARMUP:
            order = list(np.argsort(-np.asarray(self.cost_model.predict(self.context, pool))))
        else:
            order = list(self.rng.permutation(len(pool)))
        best = max(1, round(count * (1 - EXPLORE)))
        chosen = order[:best] + list(self.rng.permutation(order[best:]))[: count - best]
        self.measured_keys.update(keys[i] for i in chosen)
        return [pool[i] for i in chosen]

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.measured += len(results)

    def clone(self):
        return _GuidedSearch(self.target, self.rank)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Advances a tqdm bar by the candidates of each measured batch."""

    def __init__(self, bar: tqdm):
        super().__init__()
        self.bar = bar

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        self.bar.update(len(runner_results))


@dataclass(frozen=True)
class TaskResult:
    """One tuned function of a model: its name in the built module, calls per inference,
    the hand schedule's and the best record's time (seconds, the mean of the repeats
    measured while tuning) and the candidates measured for it in this call."""

    name: str
    calls: int
    hand: float
    tuned: float
    trials: int

    @property
    def ratio(self) -> float:
        """Hand time over tuned time: above 1, tuning found something faster."""
        return self.hand / self.tuned


def tune_model(mod: tvm.IRModule, target: TargetLike = "host", work_dir: str | os.PathLike = "tvm_ternary_tuning",
               *, trials: int = 32, remote: RemoteLike | None = None, seed: int | None = None,
               search: str = "guided", functions: Sequence[str] | None = None) -> list[TaskResult]:
    """Tune every function :func:`tvm_ternary.build` would compile for ``mod`` and ``target``
    whose schedule has knobs (:func:`model_tasks`): the conv2d/dense kernels (ours and the
    float conv kernel), the quantize-and-pack stages and patch gathers, and the float
    operators Relax lowers (pooling, means, adds). Each gets its hand schedule measured and
    up to ``trials`` candidates (fewer when its space has fewer distinct schedules, with
    the ``guided`` and ``distinct`` searches) into ``work_dir`` (resumable: tuning again
    adds records, the best of all is used). One progress bar covers the whole job; a table
    per function closes it (hand ms, tuned ms, ratio, trials). Then
    ``build(mod, target, tuned=work_dir)`` uses the records.

    Args:
        mod: the Relax module to build, e.g. from :func:`tvm_ternary.from_torch`.
        target: as for :func:`tvm_ternary.build`.
        work_dir: the tuning directory (created if needed).
        trials: measured candidates per function at most (the hand schedule is measured
            once more, the first time a directory sees a function).
        remote: measure on boards behind a TVM RPC tracker, ``{"tracker": "host:port",
            "key": k}`` (cross-compiled here), as for :func:`tune`.
        seed: seeds the search (None: random).
        search: ``"guided"``, ``"random"`` or ``"distinct"`` (:data:`SEARCHES`, as for :func:`tune`).
        functions: tune only the functions whose names contain one of these strings
            (e.g. ``["quantize", "max_pool2d"]``; the names are those of the closing table).
            Default None: all.

    Returns:
        A :class:`TaskResult` per function, slowest total (hand time x calls) first.
    """
    _check_trials("tune_model", trials)
    _check_search("tune_model", search)
    target = resolve_target(target)
    tasks, calls = model_tasks(mod, target)
    if not tasks:
        raise ValueError("tune_model: the module has no function whose schedule has knobs")
    if functions is not None:
        if isinstance(functions, str):
            raise TypeError("tune_model: functions must be a list of strings, not a string")
        chosen = {name: func for name, func in tasks.items() if any(part in name for part in functions)}
        if not chosen:
            raise ValueError(f"tune_model: no function's name contains any of {list(functions)}; "
                             f"the functions with knobs are {sorted(tasks)}")
        tasks = chosen
    session = _Session("tune_model", target, work_dir, remote)
    with tqdm(total=len(tasks) * trials, desc=f"tune_model: {len(tasks)} functions", unit="trial") as bar:
        measured = session.tune(tasks, trials, seed, bar, search)
        bar.total = bar.n            # small spaces run out of distinct candidates before ``trials``
        bar.refresh()
    results = [TaskResult(name, calls.get(name, 0), _seconds(session.hand_record(func)),
                          _seconds(session.best_record(func)), measured[name]) for name, func in tasks.items()]
    results.sort(key=lambda r: -r.hand * r.calls)
    _print_table(results)
    return results


def model_tasks(mod: tvm.IRModule, target: TargetLike) -> tuple[dict[str, tvm.tirx.PrimFunc], dict[str, int]]:
    """The functions :func:`tvm_ternary.build` compiles for ``mod`` and ``target`` whose
    schedules have knobs, unscheduled, by their names in the built module; and how often
    an inference calls each function. Not tasks: the stages only
    :class:`~tvm_ternary.schedules.GenericCPU` schedules (dense packing, pads), which have
    no knobs."""
    from .build import float_ops, lower_float_ops
    from .rewrite import rewrite_with_sources
    target = resolve_target(target)
    rewritten, sources = rewrite_with_sources(mod, target)
    lowered = lower_float_ops(rewritten, target)
    functions = {name: func for name, (_, func) in sources.items()}
    functions.update((gv.name_hint, func) for gv, func in float_ops(lowered).items())
    return {name: func for name, func in functions.items() if _has_knobs(func, target)}, _call_counts(lowered)


def _has_knobs(func: tvm.tirx.PrimFunc, target: Target) -> bool:
    """Whether the search space of ``func`` samples anything."""
    workload = _workload(func)
    sch = tvm.s_tir.Schedule(workload)
    try:
        schedules.schedule_in_place(sch, target, True)
    except (ValueError, RuntimeError):     # no tunable rule, or one TVM refuses (a RuntimeError): the hand schedule
        return False
    return len(sch.trace.decisions) > 0


def _key(func: tvm.tirx.PrimFunc) -> int:
    return tvm_ffi.structural_hash(_workload(func))


def _call_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How often ``main`` calls each function (by name)."""
    counts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.call_tir":
            name = expr.args[0].name_hint
            counts[name] = counts.get(name, 0) + 1

    tvm.relax.analysis.post_order_visit(mod["main"], visit)
    return counts


def _seconds(record: ms.database.TuningRecord) -> float:
    """The record's mean run time: what MetaSchedule ranks records by (so the best record
    is never reported slower than the hand one)."""
    return float(np.mean([float(t) for t in record.run_secs]))


def per_inference(results: Sequence[TaskResult]) -> tuple[float, float]:
    """Seconds per inference of all ``results``' functions (time x calls): hand, tuned."""
    return (sum(r.hand * r.calls for r in results), sum(r.tuned * r.calls for r in results))


def _print_table(results: list[TaskResult]) -> None:
    width = max(len(r.name) for r in results)
    lines = [f"{'function':<{width}} {'calls':>5} {'hand ms':>9} {'tuned ms':>9} {'ratio':>6} {'trials':>6}"]
    lines += [f"{r.name:<{width}} {r.calls:>5} {r.hand * 1e3:>9.4f} {r.tuned * 1e3:>9.4f} {r.ratio:>6.2f} {r.trials:>6}"
              for r in results]
    hand, tuned = per_inference(results)
    lines.append(f"{'all functions, per inference':<{width}} {'':>5} {hand * 1e3:>9.4f} {tuned * 1e3:>9.4f} "
                 f"{hand / tuned:>6.2f}")
    tqdm.write("\n".join(lines))
