"""``python -m tvm_ternary.emulator setup | serve | tracker``.

    python -m tvm_ternary.emulator setup [--dir DIR] [--force]
    python -m tvm_ternary.emulator serve --port 9090 [--tracker 127.0.0.1:9190 --key rasp4] [--dir DIR]
    python -m tvm_ternary.emulator tracker --port 9190

``serve`` runs one emulated Raspberry Pi 4 (qemu-user, ``-cpu cortex-a72``) in the
foreground until interrupted. Emulated timings are not Pi timings.
"""

from __future__ import annotations

import argparse
import signal
import sys

from . import Board, setup

NOT_PI_TIMINGS = "note: emulated board: results are exact, timings are NOT Raspberry Pi timings"


def _serve(args) -> None:
    board = Board(args.port, args.tracker, args.key, args.dir)
    where = f"tracker {args.tracker} key {args.key!r}" if args.tracker else f"key {args.key!r}"
    print(f"emulated Raspberry Pi 4 (cortex-a72) serving TVM RPC on {board.address} ({where})", flush=True)
    print(NOT_PI_TIMINGS, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while (line := board.readline()) is not None:
            print(line, end="", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()


def _tracker(args) -> None:
    import logging

    from tvm.rpc import tracker
    logging.basicConfig(level=logging.WARNING)
    port, _ = tracker._popen_start_tracker_server("127.0.0.1", args.port, args.port + 1)
    print(f"TRACKER_READY 127.0.0.1:{port}", flush=True)
    tracker.PopenTrackerServerState.current.thread.join()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m tvm_ternary.emulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="install qemu and the cross compiler, build the board's rootfs (idempotent)")
    s.add_argument("--dir", default=None, help="cache directory (default $TVM_TERNARY_EMULATOR_DIR or "
                                               "~/.cache/tvm-ternary/emulator)")
    s.add_argument("--force", action="store_true", help="rebuild the rootfs")
    s = sub.add_parser("serve", help="run an emulated Raspberry Pi 4 RPC server on 127.0.0.1")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--tracker", default=None, help="host:port of a TVM RPC tracker to register with")
    s.add_argument("--key", default="", help="key to serve under (give the same key when connecting)")
    s.add_argument("--dir", default=None, help="cache directory used by setup")
    s = sub.add_parser("tracker", help="run a TVM RPC tracker on 127.0.0.1")
    s.add_argument("--port", type=int, default=9190)
    args = p.parse_args(argv)
    if args.command == "setup":
        rootfs = setup(args.dir, args.force)
        print(f"emulated Raspberry Pi 4 ready: rootfs {rootfs}")
        print(NOT_PI_TIMINGS)
    elif args.command == "serve":
        _serve(args)
    else:
        _tracker(args)


if __name__ == "__main__":
    main()
