"""Explicit 8-lane float64 vectors for Numba kernels (512 bits: one AVX-512 register).

Numba's loop vectorizer widens inner loops over arrays, but it cannot keep a handful of
independent accumulators in vector registers across an outer loop (Numba leaves LLVM's SLP
vectorizer off), and loops of 8 iterations over arrays that may alias get scalar code. A
kernel that computes 8 independent problems side by side (one per lane) is written here with
a vector type of its own, :data:`vec8`, which is an LLVM ``<8 x double>`` value: it lives in
registers, and the few operations below compile to single vector instructions (on AVX2 each
becomes two 256-bit ones).

Arrays are addressed by a flat element offset from their first element: the arrays must be
C-contiguous float64 and the caller keeps ``offset + 8 <= size`` (no bounds check). Used by
the M2L kernel of ``fmm`` (:mod:`backends._cartesian`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = ["vadd", "vec8", "vfma", "vget", "vload", "vmul", "vscale", "vsplat", "vstore", "vzero"]

_VT = ir.VectorType(ir.DoubleType(), 8)


class Vec8Type(types.Type):
    """Numba type of 8 float64 lanes (an LLVM ``<8 x double>`` value)."""

    def __init__(self):
        super().__init__(name="vec8_float64")


vec8 = Vec8Type()


@register_model(Vec8Type)
class _Vec8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _pointer(context, builder, aryty, ary, offset):
    data = context.make_array(aryty)(context, builder, ary).data
    return cgutils.gep(builder, data, offset)


@intrinsic
def vzero(typingctx):
    """Eight zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_VT, [0.0] * 8)

    return vec8(), codegen


@intrinsic
def vsplat(typingctx, x):
    """Eight copies of the float ``x``."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float64)
        vec = builder.insert_element(
            ir.Constant(_VT, ir.Undefined), v, ir.Constant(ir.IntType(32), 0)
        )
        return builder.shuffle_vector(
            vec,
            ir.Constant(_VT, ir.Undefined),
            ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8),
        )

    return vec8(x), codegen


@intrinsic
def vload(typingctx, ary, offset):
    """Elements ``offset .. offset + 7`` of the C-contiguous float64 array ``ary``."""
    if not (
        isinstance(ary, types.Array)
        and ary.dtype == types.float64
        and isinstance(offset, types.Integer)
    ):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _VT.as_pointer()), align=8, typ=_VT)

    return vec8(ary, offset), codegen


@intrinsic
def vstore(typingctx, ary, offset, v):
    """Store ``v`` into elements ``offset .. offset + 7`` of ``ary``."""
    if not (
        isinstance(ary, types.Array)
        and ary.dtype == types.float64
        and isinstance(offset, types.Integer)
        and v == vec8
    ):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VT.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(ary, offset, v), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """Return ``a * b + c``, lane by lane, fused."""
    if not (a == vec8 and b == vec8 and c == vec8):
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_VT, [_VT, _VT, _VT])
        fma = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v8f64")
        return builder.call(fma, [args[0], args[1], args[2]])

    return vec8(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    """Return ``a + b``, lane by lane."""
    if not (a == vec8 and b == vec8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return vec8(a, b), codegen


@intrinsic
def vmul(typingctx, a, b):
    """Return ``a * b``, lane by lane."""
    if not (a == vec8 and b == vec8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])

    return vec8(a, b), codegen


@intrinsic
def vscale(typingctx, a, x):
    """Return ``a * x`` for a float ``x``."""
    if not (a == vec8 and isinstance(x, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[1], sig.args[1], types.float64)
        vec = builder.insert_element(
            ir.Constant(_VT, ir.Undefined), v, ir.Constant(ir.IntType(32), 0)
        )
        s = builder.shuffle_vector(
            vec,
            ir.Constant(_VT, ir.Undefined),
            ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8),
        )
        return builder.fmul(args[0], s)

    return vec8(a, x), codegen


@intrinsic
def vget(typingctx, a, lane):
    """Lane ``lane`` (0-7) of ``a`` as a float."""
    if not (a == vec8 and isinstance(lane, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.int32)
        return builder.extract_element(args[0], idx)

    return types.float64(a, lane), codegen
