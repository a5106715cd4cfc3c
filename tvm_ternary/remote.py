"""Boards over TVM RPC: export with the right (cross) compiler, connect, upload, run.

A *remote* is ``"host:port"`` (a board's RPC server, e.g. ``python -m tvm_ternary.emulator
serve``), or a tracker and a key: ``{"tracker": "host:port", "key": "rasp4"}`` (many
boards, one key; each session gets a free one), or a :class:`Remote`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Union

import tvm
from tvm import rpc
from tvm.support import cc
from tvm.target import Target

from .targets import TargetLike, host_arch, resolve_target, target_arch

CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")}
"""Target architecture -> (cross compiler command, Debian package that provides it)."""


_EXPORT_LOCK = threading.Lock()
"""TVM's library writer is not thread-safe (two threads exporting at once abort the process)."""


def export(lib, path: str, target: TargetLike) -> str:
    """Write ``lib`` (an ``Executable`` or runtime module) as a shared library for
    ``target`` at ``path``, linking with the target's cross compiler when its architecture
    is not the host's. Raises ``RuntimeError`` naming the Debian package when the cross
    compiler is missing."""
    arch = target_arch(resolve_target(target))
    if arch == host_arch():
        with _EXPORT_LOCK:
            lib.export_library(path)
        return path
    if arch not in CROSS_COMPILERS:
        raise RuntimeError(f"export: no cross compiler known for {arch} targets (known: {sorted(CROSS_COMPILERS)})")
    compiler, package = CROSS_COMPILERS[arch]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"export: the {arch} cross compiler {compiler} is not installed; "
                           f"apt-get install {package} (or run `python -m tvm_ternary.emulator setup`)")
    with _EXPORT_LOCK:
        lib.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


EMULATED_BOARD_FUNC = "tvm_ternary.emulated_board"
"""A global function only emulated boards register (the emulator's board server, which
cannot import this package, spells it out too): timings there are not a board's."""


@dataclass(frozen=True)
class Remote:
    """Where to run: a board's ``host:port``, or a tracker's ``host:port`` plus ``key``.

    ``session_timeout`` (seconds) bounds one session on the board side,
    ``connect_timeout`` the wait for a board's answer (a board serves one session at a
    time) and ``request_timeout`` the wait for a free board at the tracker: a dead or busy
    board ends in an error, not a hang."""

    address: str
    key: str = ""
    tracker: bool = False
    session_timeout: float = 600
    connect_timeout: float = 60
    request_timeout: float = 120

    @classmethod
    def parse(cls, remote: "RemoteLike") -> "Remote":
        if isinstance(remote, Remote):
            return remote
        if isinstance(remote, str):
            cls._split(remote)
            return cls(remote)
        if isinstance(remote, dict):
            unknown = set(remote) - {"tracker", "key", "address", "session_timeout", "connect_timeout",
                                     "request_timeout"}
            if unknown or ("tracker" in remote) == ("address" in remote):
                raise ValueError(f"remote: expected {{'tracker': 'host:port', 'key': ...}} or "
                                 f"{{'address': 'host:port'}}, got {remote!r}")
            address = remote.get("tracker") or remote["address"]
            cls._split(address)
            timeouts = {k: float(remote[k]) for k in ("session_timeout", "connect_timeout", "request_timeout")
                        if k in remote}
            return cls(address, str(remote.get("key", "")), "tracker" in remote, **timeouts)
        raise TypeError(f"remote: expected 'host:port', a dict or a Remote, got {type(remote).__name__}")

    @staticmethod
    def _split(address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"remote: address must be 'host:port', got {address!r}")
        return host, int(port)

    def __str__(self) -> str:
        return f"tracker {self.address} key {self.key!r}" if self.tracker else f"board {self.address}"

    def connect(self) -> rpc.client.RPCSession:
        """Open a session; ``RuntimeError`` naming the address when nothing answers in time."""
        host, port = self._split(self.address)
        if self.tracker:
            opener, timeout = (lambda: self._request(host, port)), self.request_timeout + self.connect_timeout
        else:
            opener, timeout = (lambda: rpc.connect(host, port, key=self.key,
                                                   session_timeout=int(self.session_timeout))), self.connect_timeout
        # TVM's handshake blocks without a timeout (e.g. on a board busy with another
        # session): open in a thread; a session that opens after we gave up is dropped.
        result: list = []
        thread = threading.Thread(target=lambda: result.append(_attempt(opener)), daemon=True)
        thread.start()
        thread.join(timeout)
        if not result and self.tracker:
            raise RuntimeError(f"remote: {self}: no board with key {self.key!r} was free within {timeout:.0f} s "
                               f"(the tracker holds a request until one is: none is registered under this "
                               f"key, all are busy, or the tracker hangs)")
        if not result:
            raise RuntimeError(f"remote: {self} did not answer within {timeout:.0f} s "
                               f"(busy with another session, or hung)")
        session, err = result[0]
        if err is not None:
            raise RuntimeError(f"remote: cannot reach {self}: {last_line(err)}")
        return session

    def is_emulated(self) -> bool:
        """Whether the board this remote reaches (one the tracker assigns) is an emulated one
        (:mod:`tvm_ternary.emulator`, which registers :data:`EMULATED_BOARD_FUNC`)."""
        session = self.connect()                  # unreachable: RuntimeError, as for any use
        try:
            session.get_function(EMULATED_BOARD_FUNC)
        except (AttributeError, RuntimeError):   # not registered there (TVM errors are RuntimeErrors): a real board
            return False
        return True

    def _request(self, host: str, port: int) -> rpc.client.RPCSession:
        """A session on the board the tracker assigns (it holds the request while none is
        free). Fails at once, saying so, when the tracker refuses connections (TVM's client
        would retry for a minute), and with the last error when requests keep failing for
        ``request_timeout`` (e.g. the board assigned does not answer)."""
        deadline = time.monotonic() + self.request_timeout
        while True:
            try:
                socket.create_connection((host, port), timeout=self.connect_timeout).close()
            except OSError as err:
                raise RuntimeError(f"the tracker does not accept connections ({err.strerror or err})") from None
            try:
                return rpc.connect_tracker(host, port).request(self.key, session_timeout=int(self.session_timeout),
                                                               max_retry=1)
            except Exception as err:   # TVM's RuntimeError naming the last socket or RPC error
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"no board with key {self.key!r} could be opened within "
                                       f"{self.request_timeout:.0f} s; last error: {last_line(err)}") from None
                time.sleep(0.5)


RemoteLike = Union[str, dict, Remote]


def last_line(err: BaseException) -> str:
    """The last line of an error's message (TVM's errors carry a traceback before it)."""
    return str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)


def _attempt(opener) -> tuple:
    try:
        return opener(), None
    except Exception as err:   # TVM raises TVMError/RuntimeError/OSError subclasses here
        return None, err


_SESSIONS: "weakref.WeakValueDictionary[Remote, rpc.client.RPCSession]" = weakref.WeakValueDictionary()
"""Open sessions by remote, shared by the modules that use them: a board serves one
session at a time, so two operators on one board must share it. A session closes when
the last module using it goes."""


def shared_session(remote: Remote) -> rpc.client.RPCSession:
    """The open session to ``remote``, or a new one."""
    session = _SESSIONS.get(remote)
    if session is None:
        session = remote.connect()
        _SESSIONS[remote] = session
    return session


class RemoteModule:
    """A compiled module uploaded to a board: ``.session``, ``.module``, ``.device``.

    Modules on the same remote share one session (:func:`shared_session`). If the board
    dies, calls raise ``RuntimeError``; :meth:`reset` (done by callers on error) makes the
    next use reconnect and upload again."""

    def __init__(self, lib, target: Target, remote: RemoteLike, name: str = "lib"):
        # a unique file: overwriting a library the board has loaded would crash the session
        self.lib, self.target, self.remote = lib, target, Remote.parse(remote)
        self.name = f"{name}-{uuid.uuid4().hex[:12]}.so"
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            with tempfile.TemporaryDirectory() as tmp:
                path = export(self.lib, os.path.join(tmp, self.name), self.target)
                session = shared_session(self.remote)
                try:
                    session.upload(path)
                    module = session.load_module(self.name)
                except Exception as err:
                    raise RuntimeError(f"remote: uploading to {self.remote} failed: {err}") from None
            self._loaded = (session, module, session.cpu(0))
        return self._loaded

    @property
    def session(self) -> rpc.client.RPCSession:
        return self._load()[0]

    @property
    def module(self) -> tvm.runtime.Module:
        return self._load()[1]

    @property
    def device(self) -> tvm.runtime.Device:
        return self._load()[2]

    def reset(self) -> None:
        """Forget the session (after a failure): the next use reconnects."""
        if self._loaded is not None and _SESSIONS.get(self.remote) is self._loaded[0]:
            del _SESSIONS[self.remote]
        self._loaded = None
