"""The emulated Raspberry Pi 4: setup, board and tracker processes, faults."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

import tvm_ternary
from tvm_ternary import emulator
from tvm_ternary.emulator import Board, Tracker, free_port
from tvm_ternary.remote import Remote, export


def live_members(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies (from /proc)."""
    members = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat))
    return members


def ternary_dense(remote, rng, shape=((2, 100), (24, 100))):
    f = tvm_ternary.op("dense", "ternary", *shape, target="rasp4", remote=remote)
    x = f.spec.scheme.activation.sample(rng, f.spec.data_shape)
    w = f.spec.scheme.weight.sample(rng, f.spec.weight_shape)
    return f, x, w


def test_setup_is_idempotent(board):
    assert emulator.is_ready()
    stamp = emulator.default_dir() / "rootfs" / ".ready"
    built = stamp.stat().st_mtime_ns
    rootfs = emulator.setup()
    assert rootfs == stamp.parent and stamp.stat().st_mtime_ns == built     # nothing rebuilt


def test_board_stop_ends_all_its_processes(rng):
    b = Board()
    f, x, w = ternary_dense(b.address, rng)
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))      # a session forked a child
    group = b.process.pid
    assert len(live_members(group)) == 2                               # the board and its session
    b.stop()
    deadline = time.monotonic() + 10
    while live_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_members(group) == []


def test_a_board_that_dies_gives_an_error_and_the_next_run_works(rng):
    b = Board()
    f, x, w = ternary_dense(b.address, rng)
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))
    b.stop()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"dense\[ternary\]: running on board 127.0.0.1:\d+ failed"):
        f(x, w)
    assert time.monotonic() - start < 30                               # an error, not a hang
    with Board(port=b.port):                                           # the board comes back
        np.testing.assert_array_equal(f(x, w), f.reference(x, w))


def test_unreachable_and_busy_boards_are_errors(board, rng):
    f, x, w = ternary_dense(f"127.0.0.1:{free_port()}", rng)
    with pytest.raises(RuntimeError, match=r"remote: cannot reach board 127.0.0.1:\d+"):
        f(x, w)
    session = Remote(board.address).connect()                          # the board serves one session
    try:
        busy = Remote(board.address, connect_timeout=3)
        with pytest.raises(RuntimeError, match=r"did not answer within 3 s \(busy with another session"):
            busy.connect()
    finally:
        del session


def test_instructions_the_cortex_a72_lacks_fault_and_the_board_serves_on(board, rng):
    """fp16 vector arithmetic (ARMv8.2) runs on qemu's default CPU but not on a Pi 4."""
    a = te.placeholder((64,), "float16", name="a")
    c = te.compute((64,), lambda i: a[i] * a[i] + a[i], name="c")
    sch = s_tir.Schedule(te.create_prim_func([a, c]))
    (i,) = sch.get_loops(sch.get_sblock("c"))
    sch.vectorize(sch.split(i, [None, 8])[1])
    a76 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                             "mattr": ["+neon", "+fullfp16"]})
    ex = tvm.compile(tvm.IRModule({"half": sch.mod["main"].with_attr("global_symbol", "half")}), target=a76)
    assert "v0.8h" in ex.mod.inspect_source("asm") or "v1.8h" in ex.mod.inspect_source("asm")
    with tempfile.TemporaryDirectory() as tmp:
        session = Remote(board.address).connect()
        session.upload(export(ex, os.path.join(tmp, "half.so"), a76))
        dev = session.cpu(0)
        x = tvm.runtime.tensor(np.ones(64, np.float16), dev)
        with pytest.raises(Exception, match="kShutdown"):
            session.load_module("half.so")["half"](x, tvm.runtime.empty((64,), "float16", dev))
        del session, x, dev
    f, x, w = ternary_dense(board.address, rng)                          # still serving
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))


def test_tracker_with_two_boards_under_one_key_serves_two_clients(rng):
    with Tracker() as tracker, Board(tracker=tracker.address, key="rasp4"), \
            Board(tracker=tracker.address, key="rasp4"):
        remote = {"tracker": tracker.address, "key": "rasp4", "request_timeout": 60}
        first = Remote.parse(remote).connect()
        second = Remote.parse({**remote, "request_timeout": 20}).connect()   # a second board, at once
        del first, second
        results = {}

        def client(name):
            f, x, w = ternary_dense(remote, np.random.default_rng(len(name)))
            results[name] = np.array_equal(f(x, w), f.reference(x, w))

        threads = [threading.Thread(target=client, args=(n,)) for n in ("a", "bb")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == {"a": True, "bb": True}


def test_serve_command(rng):
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "tvm_ternary.emulator", "serve", "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = [serve.stdout.readline() for _ in range(2)]
        assert f"serving TVM RPC on 127.0.0.1:{port}" in lines[0]
        assert "timings are NOT Raspberry Pi timings" in lines[1]
        f, x, w = ternary_dense(f"127.0.0.1:{port}", rng)
        np.testing.assert_array_equal(f(x, w), f.reference(x, w))
    finally:
        serve.terminate()
        serve.wait(30)
    assert serve.returncode == 0


def test_a_ready_line_that_arrives_with_the_line_before_it_is_seen_at_once():
    """Both lines in one write: a reader that buffers them must still see the ready line
    (it waited for the timeout before, and the tracker tests failed on a busy machine)."""
    from tvm_ternary.emulator.board import _Process
    script = "import sys, time; sys.stdout.write('starting\\nREADY now\\n'); sys.stdout.flush(); time.sleep(60)"
    start = time.monotonic()
    process = _Process([sys.executable, "-c", script], dict(os.environ), "READY", timeout=20)
    try:
        assert time.monotonic() - start < 10
        assert process.output == ["starting\n", "READY now\n"]
    finally:
        process.stop()
    assert not process.alive and process.readline(0) is None


def test_a_process_that_exits_before_it_is_ready_says_so():
    from tvm_ternary.emulator.board import _Process
    script = "import sys; print('cannot bind'); sys.exit(3)"
    with pytest.raises(RuntimeError, match=r"exited with code 3 before it was ready:\ncannot bind"):
        _Process([sys.executable, "-c", script], dict(os.environ), "READY", timeout=30)
