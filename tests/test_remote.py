"""tvm_ternary.remote: remote specs, cross export, timing and a whole model on the (emulated) board."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_ternary
from tvm_ternary import remote as remote_module
from tvm_ternary.emulator import Tracker, free_port
from tvm_ternary.remote import Remote, export

from .test_build import expected, resnet


def test_remote_forms():
    assert Remote.parse("127.0.0.1:9090") == Remote("127.0.0.1:9090")
    r = Remote.parse({"tracker": "127.0.0.1:9190", "key": "rasp4", "session_timeout": 30})
    assert (r.address, r.key, r.tracker, r.session_timeout) == ("127.0.0.1:9190", "rasp4", True, 30)
    assert str(r) == "tracker 127.0.0.1:9190 key 'rasp4'"
    with pytest.raises(ValueError, match="address must be 'host:port'"):
        Remote.parse("localhost")
    with pytest.raises(ValueError, match="expected {'tracker'"):
        Remote.parse({"tracker": "a:1", "address": "b:2"})
    with pytest.raises(TypeError, match="expected 'host:port', a dict or a Remote"):
        Remote.parse(9090)


def elf_machine(path: str) -> int:
    with open(path, "rb") as fh:
        header = fh.read(20)
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def test_export_cross_compiles_for_the_pi(tmp_path):
    f = tvm_ternary.op("dense", "ternary", (1, 64), (8, 64), target="rasp4")
    assert elf_machine(export(f.executable, str(tmp_path / "k.so"), "rasp4")) == 183       # EM_AARCH64
    host = tvm_ternary.op("dense", "ternary", (1, 64), (8, 64), target="host")
    assert elf_machine(export(host.executable, str(tmp_path / "h.so"), "llvm")) == 62      # EM_X86_64


def test_missing_cross_compiler_names_the_debian_package(tmp_path, monkeypatch):
    f = tvm_ternary.op("dense", "ternary", (1, 64), (8, 64), target="rasp4")
    monkeypatch.setattr(remote_module.shutil, "which", lambda cmd: None)
    with pytest.raises(RuntimeError, match=r"aarch64-linux-gnu-g\+\+ is not installed; apt-get install "
                                           r"g\+\+-aarch64-linux-gnu"):
        export(f.executable, str(tmp_path / "k.so"), "rasp4")


def test_time_evaluator_on_the_board(board, rng):
    f = tvm_ternary.op("conv2d", "fatnn", (1, 64, 8, 8), (16, 64, 3, 3), padding=1, target="rasp4",
                       remote=board.address)
    x = f.spec.scheme.activation.sample(rng, f.spec.data_shape)
    w = f.spec.scheme.weight.sample(rng, f.spec.weight_shape)
    seconds = f.time(f.prepare(x, w), number=2, repeat=3)             # emulated: exists, means nothing
    assert len(seconds) == 3 and all(s > 0 for s in seconds)


@pytest.mark.parametrize("scheme", ["fatnn", "w1a1", "fgq_w2a4"])
def test_quantized_resnet18_on_the_board_equals_the_host(board, tmp_path, scheme):
    model, x, mod, host_ex = resnet(scheme, 1, 0, "same")
    path = export(tvm_ternary.build(mod, "rasp4"), str(tmp_path / "resnet18.so"), "rasp4")
    session = Remote(board.address).connect()
    session.upload(path)
    dev = session.cpu(0)
    vm = relax.VirtualMachine(session.load_module(os.path.basename(path)), dev)
    out = vm["main"](tvm.runtime.tensor(x.numpy(), dev)).numpy()
    host = relax.VirtualMachine(host_ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    assert np.array_equal(out, host) and np.array_equal(out, expected(model, x))


def test_float_stem_on_the_board(board, tmp_path, rng):
    """The float conv kernel and the float schedules of build, for NEON, run on the board."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(12),
                                torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1)).eval()
    x = torch.from_numpy(rng.standard_normal((1, 3, 29, 31)).astype(np.float32))
    path = export(tvm_ternary.build(tvm_ternary.from_torch(model, x), "rasp4"), str(tmp_path / "stem.so"), "rasp4")
    session = Remote(board.address).connect()
    session.upload(path)
    dev = session.cpu(0)
    out = relax.VirtualMachine(session.load_module("stem.so"), dev)["main"](tvm.runtime.tensor(x.numpy(), dev))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_tracker_that_refuses_connections_is_reported_as_such_at_once():
    remote = Remote.parse({"tracker": f"127.0.0.1:{free_port()}", "key": "rasp4", "request_timeout": 20,
                           "connect_timeout": 20})
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"remote: cannot reach tracker 127\.0\.0\.1:\d+ key 'rasp4': the tracker "
                                           r"does not accept connections \(Connection refused\)"):
        remote.connect()
    assert time.monotonic() - start < 10                      # not TVM's minute of retries, nor our timeout


def test_a_tracker_without_a_free_board_is_reported_as_such():
    with Tracker() as tracker:
        remote = Remote.parse({"tracker": tracker.address, "key": "rasp4", "request_timeout": 1,
                               "connect_timeout": 1})
        with pytest.raises(RuntimeError, match=r"remote: tracker 127\.0\.0\.1:\d+ key 'rasp4': no board with key "
                                               r"'rasp4' was free within 2 s \(the tracker holds a request until "
                                               r"one is: none is registered under this key"):
            remote.connect()


def test_a_board_that_is_not_the_emulator_is_not_emulated():
    """A plain TVM RPC server (this host, as a real board would be) has no
    ``tvm_ternary.emulated_board`` function: ``is_emulated`` says False instead of failing."""
    with Tracker() as tracker:
        host, port = tracker.address.split(":")
        free = free_port()
        server = tvm.rpc.Server(host="127.0.0.1", port=free, port_end=free + 1, tracker_addr=(host, int(port)),
                                key="plain", silent=True)
        try:
            remote = Remote.parse({"tracker": tracker.address, "key": "plain", "request_timeout": 30})
            assert remote.is_emulated() is False
        finally:
            server.terminate()
