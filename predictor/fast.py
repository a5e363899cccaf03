"""Fast forest inference: a fitted scikit-learn forest flattened into arrays and walked by
compiled (numba) loops, with the statistics across trees accumulated during the walk.

Why this is faster than ``RandomForestRegressor.predict`` (which walks one tree at a time with a
branch per node and then builds per-tree output arrays):

- Layout: each tree is renumbered breadth first with siblings side by side, and every node is
  one 64-bit word: its threshold, the distance to its left child and its feature. A step is one
  load of that word, one load of the row's feature and ``node += distance + (x > threshold)``,
  with no branch to mispredict. Comparisons are between unsigned integers that order like the
  float32 values (``order_keys``), so the threshold fits beside the rest. A leaf has distance 0:
  it points to itself.
- Eight rows walk the same tree at once (independent dependency chains the CPU overlaps) and
  stop when all eight stand on leaves. Before walking, a batch is sorted by the leaves its rows
  reach in the first two trees, so neighbouring rows lie close in feature space, take much the
  same paths in every tree, and reach their leaves at about the same depth: eight random rows
  walked 9.4 steps per tree on the served GEMM model (depth 11.5), eight sorted ones 7.5 (the
  mean path is 7.1). Results go back to the caller's row order.
- Every row of a block (up to 16,384 rows) walks one tree before the next tree starts. A forest
  larger than the core's caches is then fetched from memory once per block: with blocks of
  1,024 rows a 1M-node forest ran 2.5x slower, the deep levels of each tree missing the cache
  for most rows; a forest that fits in cache runs at the same speed either way.
- Nothing per tree is materialised: each leaf's quantities (a per-node table the caller chooses)
  are summed into per-row accumulators, column by column over the block: a sum for every
  column's mean, and three more sums only for the columns whose spread the caller wants.

Exactness: scikit-learn sends a row left when ``float32(x) <= threshold`` (a float64); here the
comparison is against each threshold rounded *down* to the largest float32 not above it, which
agrees exactly for every finite float32 input, and the integer keys keep that order (-0 and +0
both map to +0's key). Means are summed over trees in order and divided by the tree count, as
scikit-learn does, so they are its numbers; variances use sums shifted by the first tree's value
(no cancellation when trees agree).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numba
import numpy as np
from sklearn.ensemble import RandomForestRegressor

_BLOCK = 16384  # rows per block: each tree is fetched into cache once per block
_PARALLEL_MIN_ROWS = 2048  # below this, one thread is faster than a parallel launch
_SORT_MIN_ROWS = 64  # below this, sorting costs more than it saves
_launch_lock = threading.Lock()  # numba's default threading layer is not re-entrant
_first_call_lock = threading.Lock()  # see FastForest.__init__
_U = numba.uint64
# A node's word below its threshold key: the distance to its left child, then its feature.
# Fixed widths let the compiler fold the unpacking into the walk (with widths chosen per forest
# the walk took 20% longer).
_FEATURE_BITS = 8
_MAX_FEATURES = 1 << _FEATURE_BITS
_MAX_DISTANCE = (1 << (32 - _FEATURE_BITS)) - 1
_INNER = _MAX_DISTANCE << _FEATURE_BITS  # the distance's bits: zero only on a leaf


def compiled(**options):
    """``numba.njit`` with an on-disk cache when numba finds a writable place for one (beside
    the module, or the user's cache folder); in a read-only install with no writable home it
    compiles in each process instead of failing at import."""
    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)
    return wrap


def _floor_f32(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    too_big = f.astype(np.float64) > x
    f[too_big] = np.nextafter(f[too_big], np.float32(-np.inf))
    return f


def order_keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys of float32 values, ordered as the values are (for every value but NaN;
    -0 gets +0's key): the sign bit set on positives, every bit flipped on negatives."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1)
    return _keys(flat, np.zeros(1, dtype=np.int64)).reshape(np.shape(x))


class FlatForest:
    """Every tree of a forest in flat arrays (the layout described in the module docstring).

    ``nodes`` (uint64) packs ``threshold key << 32 | distance to the left child << 8 |
    feature``, where the feature counts among ``features``, the input columns the forest splits
    on (at most 256); a leaf has distance 0 and the largest key, so it keeps every row. ``values``
    (nodes, outputs) float64 are the leaves' outputs (zero for inner nodes), ``roots`` and
    ``depths`` give each tree's first node and greatest depth."""

    def __init__(self, forest: RandomForestRegressor):
        self.n_features = int(forest.n_features_in_)
        trees = [est.tree_ for est in forest.estimators_]
        split = np.concatenate([t.feature[t.children_left != -1] for t in trees])
        self.features = np.unique(split).astype(np.int64) if len(split) else np.zeros(1, np.int64)
        if len(self.features) > _MAX_FEATURES:
            raise ValueError(f"forest: splits on {len(self.features)} features; the compiled "
                             f"form holds at most {_MAX_FEATURES}")
        local = np.zeros(self.n_features, dtype=np.uint64)
        local[self.features] = np.arange(len(self.features), dtype=np.uint64)
        nodes, values, roots, depths = [], [], [], []
        base = 0
        for tree in trees:
            left, right = tree.children_left, tree.children_right
            # Breadth first, children of each inner node placed next to each other.
            levels = [np.zeros(1, dtype=np.int64)]
            while True:
                inner = levels[-1][left[levels[-1]] != -1]
                if not len(inner):
                    break
                kids = np.empty(2 * len(inner), dtype=np.int64)
                kids[0::2], kids[1::2] = left[inner], right[inner]
                levels.append(kids)
            order = np.concatenate(levels)
            position = np.empty(tree.node_count, dtype=np.int64)
            position[order] = np.arange(len(order))
            leaf = left[order] == -1
            distance = np.where(leaf, 0, position[np.where(leaf, 0, left[order])] - position[order])
            if distance.max() > _MAX_DISTANCE:
                raise ValueError(f"forest: a tree of {tree.node_count} nodes is too wide for "
                                 f"the compiled form")
            key = np.where(leaf, np.uint32(0xFFFFFFFF),
                           order_keys(_floor_f32(tree.threshold[order]))).astype(np.uint64)
            feature = np.where(leaf, np.uint64(0), local[np.where(leaf, 0, tree.feature[order])])
            nodes.append((key << np.uint64(32))
                         | (distance.astype(np.uint64) << np.uint64(_FEATURE_BITS))
                         | feature)
            values.append(np.where(leaf[:, None], tree.value[order][:, :, 0], 0.0))
            roots.append(base)
            depths.append(tree.max_depth)
            base += len(order)
        if base >= 1 << 32:
            raise ValueError(f"forest: {base} nodes; at most 2^32 can be flattened")
        self.nodes = np.concatenate(nodes)
        self.values = np.concatenate(values)
        self.roots = np.asarray(roots, dtype=np.uint64)
        self.depths = np.asarray(depths, dtype=np.int64)

    def keys(self, features: np.ndarray) -> np.ndarray:
        """Keys (``order_keys``) of the columns the forest splits on, (rows, len(features))
        uint32, from float32 features."""
        return _keys(np.ascontiguousarray(features, dtype=np.float32), self.features)


@compiled(nogil=True)
def _keys(x, features):
    """``order_keys`` of x[:, features], in one pass (numpy would take several, which were
    most of a one-row query's time)."""
    bits = x.view(np.uint32)
    out = np.empty((len(x), len(features)), dtype=np.uint32)
    for r in range(len(x)):
        for j in range(len(features)):
            b = bits[r, features[j]]
            if b == np.uint32(1 << 31):  # -0
                b = np.uint32(0)
            out[r, j] = ~b if b >> np.uint32(31) else b | np.uint32(1 << 31)
    return out


@numba.njit(inline="always")
def _step(p, xk, row, n):
    """The node after node ``n`` (whose word is ``p``) for row ``row``."""
    return (n + ((p >> _U(_FEATURE_BITS)) & _U(_MAX_DISTANCE))
            + _U(_U(xk[row, p & _U(_MAX_FEATURES - 1)]) > (p >> _U(32))))


@numba.njit(inline="always")
def _walk1(nodes, xk, row, root, depth):
    """The leaf row ``row`` reaches from ``root``."""
    n = root
    for _ in range(depth):
        p = nodes[n]
        if p & _U(_INNER) == 0:
            break
        n = _step(p, xk, row, n)
    return n


@numba.njit(inline="always")
def _walk8(nodes, xk, r, root, depth):
    """The leaves rows r..r+7 reach from ``root``, walked side by side until all eight stand on
    one."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
    for _ in range(depth):
        p0, p1, p2, p3 = nodes[n0], nodes[n1], nodes[n2], nodes[n3]
        p4, p5, p6, p7 = nodes[n4], nodes[n5], nodes[n6], nodes[n7]
        if (p0 | p1 | p2 | p3 | p4 | p5 | p6 | p7) & _U(_INNER) == 0:
            break
        n0 = _step(p0, xk, r, n0)
        n1 = _step(p1, xk, r + 1, n1)
        n2 = _step(p2, xk, r + 2, n2)
        n3 = _step(p3, xk, r + 3, n3)
        n4 = _step(p4, xk, r + 4, n4)
        n5 = _step(p5, xk, r + 5, n5)
        n6 = _step(p6, xk, r + 6, n6)
        n7 = _step(p7, xk, r + 7, n7)
    return n0, n1, n2, n3, n4, n5, n6, n7


@numba.njit(inline="always")
def _walk_rows(nodes, xk, lo, hi, root, depth, out):
    """out[i - lo] = the leaf row i reaches from ``root``, for rows lo..hi."""
    r = lo
    while r + 8 <= hi:
        i = r - lo
        (out[i], out[i + 1], out[i + 2], out[i + 3],
         out[i + 4], out[i + 5], out[i + 6], out[i + 7]) = _walk8(nodes, xk, r, root,
                                                                  depth)
        r += 8
    for rr in range(r, hi):
        out[rr - lo] = _walk1(nodes, xk, rr, root, depth)


@compiled(nogil=True)
def _sort_keys(xk, nodes, roots, depths):
    """Per row: its leaf in the first tree, then in the second (within each tree), as one
    int64, so that sorting by it brings rows with the same paths together."""
    key = np.empty(len(xk), dtype=np.int64)
    first = np.empty(len(xk), dtype=np.uint64)
    _walk_rows(nodes, xk, 0, len(xk), roots[0], depths[0], first)
    if len(roots) == 1:
        for r in range(len(xk)):
            key[r] = np.int64(first[r] - roots[0])
        return key
    second = np.empty(len(xk), dtype=np.uint64)
    _walk_rows(nodes, xk, 0, len(xk), roots[1], depths[1], second)
    for r in range(len(xk)):
        key[r] = np.int64((first[r] - roots[0]) << _U(32) | (second[r] - roots[1]))
    return key


@compiled(nogil=True)
def _moments_rows(xk, rows, nodes, roots, depths, table, spread, lo, hi, mean, var):
    """Mean across trees of ``table[leaf]``, and variance of its columns ``spread``, for rows
    lo..hi of xk, written to the output rows ``rows[lo..hi]``."""
    n_trees = len(roots)
    m, s = table.shape[1], len(spread)
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        size = stop - start
        leaves = np.empty(size, dtype=np.uint64)
        total = np.empty((m, size))
        shift = np.empty((s, size))
        dsum = np.zeros((s, size))
        dsq = np.zeros((s, size))
        for t in range(n_trees):
            _walk_rows(nodes, xk, start, stop, roots[t], depths[t], leaves)
            for j in range(m):
                if t == 0:
                    for i in range(size):
                        total[j, i] = table[leaves[i], j]
                else:
                    for i in range(size):
                        total[j, i] += table[leaves[i], j]
            for c in range(s):
                j = spread[c]
                if t == 0:
                    for i in range(size):
                        shift[c, i] = table[leaves[i], j]
                else:
                    for i in range(size):
                        d = table[leaves[i], j] - shift[c, i]
                        dsum[c, i] += d
                        dsq[c, i] += d * d
        for i in range(size):
            out = rows[start + i]
            for j in range(m):
                mean[out, j] = total[j, i] / n_trees
            for c in range(s):
                v = (dsq[c, i] - dsum[c, i] * dsum[c, i] / n_trees) / n_trees
                var[out, c] = max(v, 0.0)


@compiled(parallel=True, nogil=True)
def _moments_parallel(xk, rows, nodes, roots, depths, table, spread, mean, var, chunks):
    """The rows in ``chunks`` contiguous parts, one per thread, each walked in blocks."""
    size = (len(xk) + chunks - 1) // chunks
    for c in numba.prange(chunks):
        lo = c * size
        hi = min(lo + size, len(xk))
        if lo < hi:
            _moments_rows(xk, rows, nodes, roots, depths, table, spread, lo, hi, mean, var)


@compiled(nogil=True)
def _leaves(xk, nodes, roots, depths, out):
    for t in range(len(roots)):
        _walk_rows(nodes, xk, 0, len(xk), roots[t], depths[t], out[t])


class FastForest:
    """Compiled inference for a fitted forest. ``moments(F, table)`` gives every row's mean and
    variance across trees of ``table[leaf]`` (a per-node table of quantities, rows aligned with
    :attr:`values`); ``per_tree(F)`` stacks every tree's output as scikit-learn's trees would.

    ``threads`` > 1 splits large batches across that many threads; one thread releases the GIL
    and suits a server that already runs requests concurrently."""

    def __init__(self, forest: RandomForestRegressor, threads: int = 1):
        if threads < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        self.flat = FlatForest(forest)
        self.threads = threads
        self.n_trees = len(self.flat.roots)
        # Compile (or load from numba's cache) now, not in the first request a server answers;
        # one forest at a time: numba's compiler parses the function's source with ast.parse
        # (numba.misc.firstlinefinder), which CPython 3.11 can fail when several threads parse
        # at once ("SystemError: AST constructor recursion depth mismatch",
        # python/cpython#106905), as concurrent model loads did.
        with _first_call_lock:
            self.moments(np.zeros((_SORT_MIN_ROWS, self.flat.n_features), dtype=np.float32),
                         self.values)

    @property
    def values(self) -> np.ndarray:
        """Leaf outputs per flat node, (nodes, outputs) float64."""
        return self.flat.values

    def _checked_keys(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.flat.n_features:
            raise ValueError(f"features: expected (rows, {self.flat.n_features}), "
                             f"got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features: every value must be finite")
        return self.flat.keys(x)

    def moments(self, features: np.ndarray, table: np.ndarray,
                spread: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) across trees: the mean of every table column, (rows, columns), and
        the population variance (as ``numpy.var``) of the columns ``spread`` (default all),
        (rows, len(spread)); both float64."""
        xk = self._checked_keys(features)
        table = np.ascontiguousarray(table, dtype=np.float64)
        if table.ndim != 2 or len(table) != len(self.flat.nodes):
            raise ValueError(f"table: expected ({len(self.flat.nodes)}, columns), "
                             f"got {table.shape}")
        columns = np.arange(table.shape[1]) if spread is None else np.asarray(spread, np.int64)
        if columns.ndim != 1 or ((columns < 0) | (columns >= table.shape[1])).any():
            raise ValueError(f"spread: column indices of the table's {table.shape[1]} columns "
                             f"expected, got {spread!r}")
        f = self.flat
        if len(xk) >= _SORT_MIN_ROWS:
            rows = np.argsort(_sort_keys(xk, f.nodes, f.roots, f.depths), kind="stable")
            xk = xk[rows]
        else:
            rows = np.arange(len(xk))
        mean = np.empty((len(xk), table.shape[1]))
        var = np.empty((len(xk), len(columns)))
        if self.threads > 1 and len(xk) >= _PARALLEL_MIN_ROWS:
            threads = min(self.threads, numba.config.NUMBA_NUM_THREADS)
            with _launch_lock:
                numba.set_num_threads(threads)
                _moments_parallel(xk, rows, f.nodes, f.roots, f.depths, table, columns, mean,
                                  var, threads)
        else:
            _moments_rows(xk, rows, f.nodes, f.roots, f.depths, table, columns, 0, len(xk),
                          mean, var)
        return mean, var

    def per_tree(self, features: np.ndarray) -> np.ndarray:
        """(trees, rows, outputs) float64: each tree's prediction for each row."""
        xk = self._checked_keys(features)
        f = self.flat
        leaves = np.empty((self.n_trees, len(xk)), dtype=np.uint64)
        _leaves(xk, f.nodes, f.roots, f.depths, leaves)
        return f.values[leaves]
