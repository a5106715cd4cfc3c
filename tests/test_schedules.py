"""Schedule rule dispatch (the per-target fast rules come with their own tests)."""

import pytest
import tvm
from tvm import te

from tvm_ternary import schedules
from tvm_ternary.operators import OperatorSpec
from tvm_ternary.schemes import make_scheme

from .conftest import AVX2


def spec(scheme="ternary", padding=1, **params):
    return OperatorSpec.create("conv2d", make_scheme("conv2d", scheme, **params), (1, 33, 6, 6),
                               (4, 33, 3, 3), 1, padding)


@pytest.mark.parametrize("func", [spec().data_prim_func(), spec().kernel_prim_func(),
                                  spec("fatnn").kernel_prim_func(),
                                  spec("fgq", group_size=4, abits=4).kernel_prim_func()],
                         ids=["pack", "ternary", "fatnn", "fgq"])
def test_generic_rule_parallelizes_and_inlines_padding(func):
    sch = schedules.schedule(func, tvm.target.Target(AVX2))
    script = sch.mod.script()
    assert "T.parallel" in script
    assert 'T.sblock("pad")' not in script


def test_rule_declines_foreign_functions():
    a = te.placeholder((4,), "float32", name="a")
    b = te.compute((4,), lambda i: a[i] * 2, name="double")
    func = te.create_prim_func([a, b])
    assert schedules.GenericCPU().apply(func, tvm.target.Target(AVX2), False) is None
    with pytest.raises(ValueError, match="schedules: no rule for main"):
        schedules.schedule(func, tvm.target.Target(AVX2))


def test_non_cpu_target_is_refused():
    with pytest.raises(ValueError, match="schedules: target kind 'c' is not supported"):
        schedules.rules_for(tvm.target.Target("c"))
