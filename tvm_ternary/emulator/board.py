"""Start and stop emulated boards and an RPC tracker as processes on 127.0.0.1.

Each runs in its own process group, so stopping one ends exactly the processes it started
(a board forks one child per RPC session), and nothing else.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .rootfs import guest_python, is_ready, rootfs_dir

GUEST_CPU = "cortex-a72"
"""qemu CPU model: the Pi 4's core, so instructions it lacks fault as on the board."""

BOARD_SERVER = Path(__file__).with_name("board_server.py")


def guest_env() -> dict[str, str]:
    """A clean environment for the guest: none of the host's Python paths leak in."""
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": "/opt/site", "TVM_USE_RUNTIME_LIB": "1",
            "PYTHONUNBUFFERED": "1"}


def qemu_command(rootfs: Path, python_args: list[str]) -> list[str]:
    """Run the guest's Python with ``python_args`` under qemu (``-L``: guest paths resolve in the rootfs first)."""
    return ["qemu-aarch64-static", "-cpu", GUEST_CPU, "-L", str(rootfs), str(guest_python(rootfs)), *python_args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A child process in its own group that prints a ready line before serving.

    A thread drains its output into a queue from the start: lines never wait in a file
    object's buffer where ``select`` cannot see them (two lines arriving in one read left
    the ready line unseen until the timeout), and the child never blocks on a full pipe."""

    name = "process"

    def __init__(self, command: list[str], env: dict[str, str], ready: str, timeout: float):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        self.output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0))
            if line is None:
                try:
                    code = self.process.wait(timeout=1)          # the end of its output: it exited
                except subprocess.TimeoutExpired:
                    code = None
                self.stop()
                why = f"exited with code {code} before it was ready" if code is not None else \
                    f"did not start within {timeout:.0f} s"
                raise RuntimeError(f"{self.name} {why}:\n" + "".join(self.output[-20:]))
            self.output.append(line)
            if line.startswith(ready):
                return

    def _drain(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)                                    # end of output

    def readline(self, timeout: float | None = None) -> str | None:
        """The next line the process printed; None at the end of its output or when none
        came within ``timeout`` seconds (None: wait as long as it takes)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            self._lines.put(None)                                # stays at the end for later calls
        return line

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """End the process group this object started: SIGTERM, then SIGKILL for whatever
        is left (a board's session children included)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        self._drainer.join(timeout)                    # the group is gone: its output ends
        if not self._drainer.is_alive():
            self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Board(_Process):
    """An emulated Raspberry Pi 4 serving TVM RPC on ``127.0.0.1:port``: directly, or
    registered with a tracker under ``key``. Timings measured on it are **not** Pi
    timings (qemu translates every instruction); results are exact.

    >>> with Board(port=9090) as board:
    ...     tvm_ternary.op(..., target="rasp4", remote=board.address)
    """

    name = "emulated board"

    def __init__(self, port: int | None = None, tracker: str | None = None, key: str = "",
                 cache_dir: Path | str | None = None, timeout: float = 120):
        if not is_ready(cache_dir):
            raise RuntimeError("emulated board: not set up; run `python -m tvm_ternary.emulator setup` first "
                               f"(rootfs expected under {rootfs_dir(cache_dir)})")
        self.port = port or free_port()
        self.key = key
        args = [str(BOARD_SERVER), "--port", str(self.port), "--key", key]
        if tracker:
            args += ["--tracker", tracker]
        super().__init__(qemu_command(rootfs_dir(cache_dir), args), guest_env(), "BOARD_READY", timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Tracker(_Process):
    """TVM's RPC tracker on ``127.0.0.1:port``, in a process of its own (TVM's
    ``python -m tvm.exec.rpc_tracker`` leaves a worker holding the port when killed)."""

    name = "RPC tracker"

    def __init__(self, port: int | None = None, timeout: float = 60):
        self.port = port or free_port()
        command = [sys.executable, "-m", "tvm_ternary.emulator", "tracker", "--port", str(self.port)]
        super().__init__(command, dict(os.environ), "TRACKER_READY", timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
