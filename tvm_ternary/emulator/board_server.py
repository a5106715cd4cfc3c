"""TVM RPC server of an emulated board. Runs *inside* qemu-aarch64 with the guest's Python,
which has the TVM runtime but not tvm_ternary, so this file imports only tvm.

TVM's stock ``python -m tvm.exec.rpc_server`` starts its listener in a worker that
re-executes ``sys.executable``: the aarch64 interpreter, which the host kernel cannot run
(qemu-user does not follow ``execve``). Here the listener runs in this process; each
session is a forked child (fork works under qemu-user). A session that crashes its child
(for example on an illegal instruction) ends the stock listener loop, so it is restarted.
"""

import argparse
import ctypes
import logging
import multiprocessing
import os
import socket
import sys
import time

multiprocessing.set_start_method("fork", force=True)

import tvm  # noqa: E402
from tvm.rpc import server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--tracker", default=None, help="host:port of an RPC tracker to register with")
    p.add_argument("--key", default="", help="key under which the board serves")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # runtime-only mode (TVM_USE_RUNTIME_LIB=1) leaves out libtvm_runtime_extra.so, which
    # holds tvm.contrib.random.random_fill_for_measure (MetaSchedule's RPC runner needs it)
    extra = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_extra.so")
    if os.path.exists(extra):
        ctypes.CDLL(extra, ctypes.RTLD_GLOBAL)

    # tells a client it runs on an emulated board (tvm_ternary.remote.EMULATED_BOARD_FUNC)
    tvm.register_global_func("tvm_ternary.emulated_board", lambda: 1)

    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        sys.exit(f"board: cannot listen on {args.host}:{args.port}: {err}")
    sock.listen(1)
    home = os.getcwd()
    print(f"BOARD_READY port={args.port} key={args.key} tracker={args.tracker}", flush=True)
    while True:
        try:
            server._listen_loop(sock, args.port, args.key, tracker, None, None)
        except Exception as err:  # a session child died: keep serving
            logging.warning("board: session ended abnormally (%r); serving on", err)
            os.chdir(home)   # the session's temporary working directory is gone
            time.sleep(0.2)


if __name__ == "__main__":
    main()
