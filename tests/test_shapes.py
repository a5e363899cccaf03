import pytest

from collectors.gemm.shapes import conv_as_gemm, log_grid, network_shapes, random_shapes
from collectors.sweep import plan_gemm


def test_log_grid_is_log_spaced_and_complete():
    shapes = log_grid(16, 1024, 4)
    sizes = sorted({s.m for s in shapes})
    assert sizes == [16, 64, 256, 1024]
    assert len(shapes) == 64


def test_random_shapes_are_reproducible_and_in_range():
    a, b = random_shapes(30, 8, 512, seed=3), random_shapes(30, 8, 512, seed=3)
    assert a == b
    assert all(8 <= d <= 512 for s in a for d in (s.m, s.n, s.k))
    assert random_shapes(30, 8, 512, seed=4) != a


def test_network_shapes_include_convs_and_attention():
    # ResNet-50 3x3 conv at 56x56, 64 channels, batch 1: M = 56*56, N = 64, K = 64*9
    assert conv_as_gemm(1, 64, 64, 3, 56, 56) == (3136, 64, 576)
    shapes = network_shapes(batches=(1,), seq_lens=(128,))
    assert any(s.origin.startswith("resnet50.l1.conv3x3") and (s.m, s.n, s.k) == (3136, 64, 576)
               for s in shapes)
    qk = [s for s in shapes if s.origin.startswith("bert-base.attn_qk")]
    assert qk and (qk[0].m, qk[0].n, qk[0].k, qk[0].batch) == (128, 128, 64, 12)
    assert all(max(s.m, s.n, s.k) <= 2048 for s in network_shapes(max_size=2048))


@pytest.mark.parametrize("call, msg", [
    (lambda: log_grid(0, 10, 3), "--min-size"),
    (lambda: log_grid(100, 10, 3), "--max-size"),
    (lambda: random_shapes(0), "--count"),
    (lambda: plan_gemm(log_grid(8, 8, 1), ["fp32"], ["nx"]), "--layout"),
])
def test_bad_ranges_are_clear(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
