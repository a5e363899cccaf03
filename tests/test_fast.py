"""The compiled forest (predictor.fast) against scikit-learn's own trees."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from predictor.fast import _BLOCK, FastForest


@pytest.fixture(scope="module")
def forest_and_rows():
    rng = np.random.default_rng(3)
    x = rng.random((600, 5)).astype(np.float32)
    # Repeated values put many rows exactly on split thresholds.
    x[:, 1] = np.round(x[:, 1] * 8) / 8
    y = np.column_stack([np.sin(6 * x[:, 0]) + x[:, 1], 100 * x[:, 2] * x[:, 3]])
    forest = RandomForestRegressor(30, max_features=0.6, random_state=0).fit(x, y)
    query = np.concatenate([x, rng.random((2500, 5)).astype(np.float32)])
    return forest, query


def reference(forest: RandomForestRegressor, x: np.ndarray) -> np.ndarray:
    return np.stack([t.predict(x) for t in forest.estimators_])  # (trees, rows, outputs)


def test_per_tree_is_sklearn_exactly(forest_and_rows):
    forest, x = forest_and_rows
    assert np.array_equal(FastForest(forest).per_tree(x), reference(forest, x))


@pytest.mark.parametrize("threads", [1, 2])
def test_moments_match_sklearn_and_numpy(forest_and_rows, threads):
    forest, x = forest_and_rows  # 3,100 rows: enough for the parallel path with 2 threads
    fast = FastForest(forest, threads=threads)
    table = np.column_stack([fast.values, np.exp(fast.values[:, 0])])
    mean, var = fast.moments(x, table)
    trees = reference(forest, x)
    quantities = np.concatenate([trees, np.exp(trees[:, :, :1])], axis=2)
    # The means are summed in tree order and divided, as scikit-learn does: equal bits.
    assert np.array_equal(mean[:, :2], forest.predict(x))
    assert np.allclose(var, quantities.var(axis=0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_longer_than_a_block_match_sklearn(forest_and_rows, threads):
    forest, x = forest_and_rows
    big = np.tile(x, (12, 1))[:2 * _BLOCK + 13]  # two whole blocks and a ragged third
    mean, _ = FastForest(forest, threads=threads).moments(big, FastForest(forest).values)
    assert np.array_equal(mean, forest.predict(big))


def test_variance_is_exact_when_trees_agree():
    x = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    y = 1e6 + np.where(x[:, 0] > 0.5, 1e-3, 0.0)  # large offset, tiny differences
    forest = RandomForestRegressor(20, random_state=0, bootstrap=False).fit(x, y)
    fast = FastForest(forest)
    _, var = fast.moments(x, fast.values)
    assert np.all(var == 0.0)  # every tree is the same tree: no spread, not rounding noise


def test_bad_features_are_clear_errors(forest_and_rows):
    forest, x = forest_and_rows
    fast = FastForest(forest)
    with pytest.raises(ValueError, match="features: expected"):
        fast.per_tree(x[:, :3])
    bad = x[:4].copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="features: every value must be finite"):
        fast.moments(bad, fast.values)
    with pytest.raises(ValueError, match="table"):
        fast.moments(x, fast.values[:10])
    with pytest.raises(ValueError, match="threads"):
        FastForest(forest, threads=0)


def test_compiles_without_a_cache_where_numba_finds_no_place_for_one(monkeypatch):
    import numba

    from predictor.fast import compiled

    # Any locator failure makes numba raise RuntimeError when caching is enabled.
    monkeypatch.setattr(numba.config, "CACHE_LOCATOR_CLASSES", "NoSuchLocator")

    def add_one(a):
        return a + 1

    with pytest.raises(RuntimeError, match="locator"):
        numba.njit(cache=True)(add_one)
    assert compiled()(add_one)(41) == 42


def test_order_keys_sort_as_the_floats_do():
    from predictor.fast import order_keys

    rng = np.random.default_rng(0)
    spread = rng.standard_normal(500) * 10.0 ** rng.integers(-40, 38, 500)
    x = np.concatenate([spread.astype(np.float32),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45,
                                  np.finfo(np.float32).max, -np.finfo(np.float32).max],
                                 dtype=np.float32)]).astype(np.float32)
    keys = order_keys(x).astype(np.int64)
    less = x[:, None] < x[None, :]
    assert np.array_equal(keys[:, None] < keys[None, :], less)
    assert order_keys(np.float32(-0.0)) == order_keys(np.float32(0.0))


def test_signs_zeros_and_rows_on_thresholds_follow_sklearn():
    rng = np.random.default_rng(5)
    x = (rng.integers(-4, 5, size=(400, 3)) / 2).astype(np.float32)  # many rows on thresholds
    x[::7, 0] = -0.0
    y = x[:, 0] * 2 - x[:, 1] + np.where(x[:, 2] > 0, 1.0, -1.0)
    forest = RandomForestRegressor(25, random_state=0).fit(x, y)
    query = np.concatenate([x, -x, rng.normal(size=(300, 3)).astype(np.float32)])
    fast = FastForest(forest)
    assert np.array_equal(fast.per_tree(query)[:, :, 0], reference(forest, query))
    assert np.array_equal(fast.moments(query, fast.values)[0][:, 0], forest.predict(query))


def test_rows_come_back_in_the_callers_order_sorted_or_not(forest_and_rows):
    from predictor.fast import _SORT_MIN_ROWS

    forest, x = forest_and_rows
    fast = FastForest(forest)
    table = np.column_stack([fast.values, np.exp(fast.values[:, 0])])
    mean, var = fast.moments(x, table)  # sorted internally
    order = np.random.default_rng(1).permutation(len(x))
    mean_p, var_p = fast.moments(x[order], table)
    assert np.array_equal(mean_p, mean[order]) and np.array_equal(var_p, var[order])
    few = x[:_SORT_MIN_ROWS - 1]  # walked unsorted
    assert np.array_equal(fast.moments(few, table)[0], mean[:len(few)])


def test_forests_of_lone_leaves_and_of_too_many_features():
    x = np.random.default_rng(2).random((50, 4)).astype(np.float32)
    constant = RandomForestRegressor(5, random_state=0).fit(x, np.full(50, 3.5))
    fast = FastForest(constant)
    assert np.array_equal(fast.moments(x, fast.values)[0][:, 0], np.full(50, 3.5))
    wide = np.random.default_rng(3).random((3000, 600)).astype(np.float32)
    many = RandomForestRegressor(4, max_features=1, random_state=0).fit(
        wide, np.random.default_rng(4).random(3000))
    with pytest.raises(ValueError, match="forest: splits on .* features; the compiled form "
                                         "holds at most 256"):
        FastForest(many)


def test_spread_picks_the_columns_whose_variance_is_summed(forest_and_rows):
    forest, x = forest_and_rows
    fast = FastForest(forest)
    table = np.column_stack([fast.values, np.exp(fast.values[:, 0])])
    mean, var = fast.moments(x, table)
    mean_1, var_1 = fast.moments(x, table, spread=[2, 0])
    assert np.array_equal(mean_1, mean) and np.array_equal(var_1, var[:, [2, 0]])
    mean_0, var_0 = fast.moments(x, table, spread=())
    assert np.array_equal(mean_0, mean) and var_0.shape == (len(x), 0)
    with pytest.raises(ValueError, match="spread: column indices of the table's 3 columns"):
        fast.moments(x, table, spread=[3])
