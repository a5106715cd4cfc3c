"""An emulated Raspberry Pi 4 for tests, CI and users without a board.

``python -m tvm_ternary.emulator setup`` installs qemu-user and the aarch64 cross compiler
(apt, as root) and builds the board's root file system once (about 215 MB, cached);
``python -m tvm_ternary.emulator serve --port 9090`` runs a board: the aarch64 TVM runtime
under ``qemu-aarch64-static -cpu cortex-a72``, serving TVM RPC on 127.0.0.1. Code built
for ``target="rasp4"`` runs on it exactly as on a Pi 4 (instructions the Cortex-A72 lacks
fault); **its timings are not Pi timings**.
"""

from .board import Board, Tracker, free_port
from .rootfs import default_dir, is_ready, setup

__all__ = ["setup", "is_ready", "default_dir", "Board", "Tracker", "free_port"]
