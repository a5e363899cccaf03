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


def test_an_aligned_share_of_random_shapes_takes_multiples_of_powers_of_two():
    plain = random_shapes(400, 16, 8192, seed=5)
    mixed = random_shapes(400, 16, 8192, seed=5, aligned=0.5)
    moved = [s.origin != "random" for s in mixed]
    assert 150 < sum(moved) < 250
    for p, s, was_moved in zip(plain, mixed, moved, strict=True):
        dims, before = (s.m, s.n, s.k), (p.m, p.n, p.k)
        assert all(16 <= d <= 8192 for d in dims)
        if not was_moved:
            assert dims == before  # the unaligned draws are the plain ones
            continue
        largest = int(s.origin.removeprefix("random, aligned to "))
        assert largest in (8, 16, 32, 64, 128)
        for d, b in zip(dims, before, strict=True):
            step = min(largest, 1 << (b.bit_length() - 1))  # a small size: its power of two
            assert d % step == 0 and abs(d - b) <= step  # the nearest multiple
    assert sum(s.m % 8 == s.n % 8 == s.k % 8 == 0 for s in plain) < 5  # almost never by chance
    # In a narrow range, a multiple with no room (32 or more within 100..120) keeps the draw.
    narrow = random_shapes(50, 100, 120, seed=1, aligned=1.0)
    aligned = [s for s in narrow if s.origin != "random"]
    assert 10 < len(aligned) < 50
    assert all(100 <= d <= 120 and d % 8 == 0 for s in aligned for d in (s.m, s.n, s.k))


def test_a_batched_share_of_random_shapes_does_the_work_of_one_gemm():
    plain = random_shapes(400, 16, 8192, seed=6, aligned=0.5)
    assert random_shapes(400, 16, 8192, seed=6, aligned=0.5, batched=0.0) == plain
    mixed = random_shapes(400, 16, 8192, seed=6, batched=0.3, max_batch=32)
    unbatched = random_shapes(400, 16, 8192, seed=6)
    batched = [(s, u) for s, u in zip(mixed, unbatched, strict=True) if s.batch > 1]
    assert 80 < len(batched) < 160
    assert all(s.origin == f"random, batch {s.batch}" and 2 <= s.batch <= 32 for s, _ in batched)
    # The others are the plain ones, place for place, aligned ones too.
    both = random_shapes(400, 16, 8192, seed=6, aligned=0.5, batched=0.3, max_batch=32)
    assert [s for s, b in zip(plain, both, strict=True) if b.batch == 1] == [
        b for b in both if b.batch == 1]
    for s, u in batched:  # each dimension shrunk by the batch's cube root, down to min_size
        for d, was in zip((s.m, s.n, s.k), (u.m, u.n, u.k), strict=True):
            assert d == max(16, round(was / s.batch ** (1 / 3)))
    # Aligned and batched together: the batched dimensions are the ones aligned.
    both = random_shapes(200, 16, 8192, seed=7, aligned=1.0, batched=1.0)
    assert all(s.batch > 1 and ", aligned to " in s.origin for s in both[:20])


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
    (lambda: random_shapes(5, aligned=1.5), "--aligned"),
    (lambda: random_shapes(5, batched=-0.1), "--batched"),
    (lambda: random_shapes(5, batched=0.5, max_batch=1), "--max-batch"),
    (lambda: plan_gemm(log_grid(8, 8, 1), ["fp32"], ["nx"]), "--layout"),
])
def test_bad_ranges_are_clear(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
