"""How tvm_ternary says that a request runs slower than it could.

Nothing here is silent: where the result is still right but the fast path is not taken (a
quantized layer left to plain Relax, a generic target on a CPU with wider vectors), a
:class:`SlowPathWarning` names the operator or layer and why. Filter it by category,
``warnings.filterwarnings("ignore", category=tvm_ternary.SlowPathWarning)``, where the slow
path is what you want.
"""

from __future__ import annotations


class SlowPathWarning(UserWarning):
    """The result is right, but not computed the fast way the user asked for."""
