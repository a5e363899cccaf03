import pytest

from collectors.ops import Op, OpError, gemm_bytes, gemm_flops


def test_gemm_op_is_validated_and_keyed():
    op = Op.gemm("64", 32.0, 16, dtype="BF16", batch=2, trans_b=1)
    assert (op["m"], op["n"], op["k"], op.dtype, op.batch, op.layout) == (64, 32, 16, "bf16", 2,
                                                                          "nt")
    assert op.key() == "gemm[k=16,m=64,n=32,trans_a=0,trans_b=1]:bf16:b2"
    assert Op.from_dict(op.to_dict()) == op


@pytest.mark.parametrize("kwargs, field", [
    ({"m": 0, "n": 4, "k": 4}, "m"),
    ({"m": 4, "n": -3, "k": 4}, "n"),
    ({"m": 4, "n": 4, "k": 2**40}, "k"),
    ({"m": 4, "n": 4, "k": float("nan")}, "k"),
    ({"m": 4.5, "n": 4, "k": 4}, "m"),
    ({"m": "abc", "n": 4, "k": 4}, "m"),
    ({"m": 4, "n": 4, "k": 4, "dtype": "fp8x"}, "dtype"),
    ({"m": 4, "n": 4, "k": 4, "batch": 0}, "batch"),
    ({"m": 4, "n": 4, "k": 4, "trans_a": 2}, "trans_a"),
])
def test_bad_gemm_names_the_field(kwargs, field):
    with pytest.raises(OpError) as err:
        Op.gemm(**kwargs)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_other_kinds_and_unknown_parameters():
    conv = Op.make("conv2d", {"in_channels": 3, "out_channels": 8, "kernel": 3, "height": 32,
                              "width": 32})
    assert conv["stride"] == 1 and conv["groups"] == 1
    with pytest.raises(OpError, match="^kind:"):
        Op.make("conv3d", {})
    with pytest.raises(OpError, match=r"^dilation: is not a parameter of conv2d \(required: "
                                      r"in_channels, .*; optional: .*stride"):
        Op.make("conv2d", {"dilation": 2})
    with pytest.raises(OpError, match="^width: is required"):
        Op.make("conv2d", {"in_channels": 3, "out_channels": 8, "kernel": 3, "height": 32})


def test_flops_and_bytes():
    assert gemm_flops(2, 3, 4, batch=5) == 2 * 2 * 3 * 4 * 5
    assert gemm_bytes(2, 3, 4, "fp16") == (8 + 12 + 6) * 2
