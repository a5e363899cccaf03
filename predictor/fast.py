"""Fast forest inference: a fitted random forest compiled to one ONNX ``TreeEnsembleRegressor``
that returns every tree's output (so uncertainty stays available), run by ONNX Runtime.

Each tree t becomes ONNX target t, and its leaves "predict" their own node id: ONNX Runtime only
finds the leaf each row reaches, and the leaf's values are then read in float64 from the
scikit-learn tree itself. Leaf values in ONNX would be float32 (agreeing to ~1e-7 relative, and a
spread across nearly equal trees much worse); node ids below 2^24 are exact in float32, so the
outputs are scikit-learn's exactly. scikit-learn sends a row left when
``float32(x) <= threshold`` (a float64); ONNX compares in float32, so each threshold is rounded
*down* to the largest float32 not above it, which makes the two comparisons agree exactly for
every float32 input.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestRegressor


def _floor_f32(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    too_big = f.astype(np.float64) > x
    f[too_big] = np.nextafter(f[too_big], np.float32(-np.inf))
    return f


def forest_to_onnx(forest: RandomForestRegressor, n_features: int) -> bytes:
    """Serialized ONNX model: ``X`` float32 (rows, features) -> ``Y`` (rows, trees), the node id
    of the leaf each row reaches in each tree."""
    from onnx import TensorProto, helper

    attrs: dict[str, list] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
        "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids",
        "target_ids", "target_weights")}
    for t, est in enumerate(forest.estimators_):
        tree = est.tree_
        if tree.node_count >= 1 << 24:
            raise ValueError(f"tree {t}: {tree.node_count} nodes; node ids above 2^24 are not "
                             "exact in float32")
        left, right = tree.children_left, tree.children_right
        leaf = left == -1
        n = tree.node_count
        attrs["nodes_treeids"] += [t] * n
        attrs["nodes_nodeids"] += list(range(n))
        attrs["nodes_featureids"] += np.where(leaf, 0, tree.feature).tolist()
        attrs["nodes_values"] += np.where(leaf, 0.0, _floor_f32(tree.threshold)).tolist()
        attrs["nodes_modes"] += ["LEAF" if lf else "BRANCH_LEQ" for lf in leaf]
        attrs["nodes_truenodeids"] += np.where(leaf, 0, left).tolist()
        attrs["nodes_falsenodeids"] += np.where(leaf, 0, right).tolist()
        leaves = np.flatnonzero(leaf)
        attrs["target_treeids"] += [t] * len(leaves)
        attrs["target_nodeids"] += leaves.tolist()
        attrs["target_ids"] += [t] * len(leaves)
        attrs["target_weights"] += leaves.astype(float).tolist()
    n_trees = len(forest.estimators_)
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml",
                            n_targets=n_trees, aggregate_function="SUM",
                            post_transform="NONE", **attrs)
    graph = helper.make_graph(
        [node], "hwnas_forest",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n_trees])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    return model.SerializeToString()


class FastForest:
    """Per-tree outputs of a forest, the leaves found by ONNX Runtime: ``per_tree(F)`` has the
    same shape and values as stacking every scikit-learn tree's predict."""

    def __init__(self, forest: RandomForestRegressor, n_features: int, threads: int = 1):
        import onnxruntime as ort

        self.n_trees = len(forest.estimators_)
        self.n_outputs = forest.n_outputs_
        # Every tree's node values (float64) in one array; tree t's nodes start at offsets[t].
        values = [est.tree_.value[:, :, 0] for est in forest.estimators_]
        self.offsets = np.cumsum([0] + [len(v) for v in values[:-1]])
        self.values = np.concatenate(values)
        opts = ort.SessionOptions()
        # One thread is fastest for the small batches a service sees; callers can raise it.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(forest_to_onnx(forest, n_features), opts,
                                            providers=["CPUExecutionProvider"])

    def per_tree(self, features: np.ndarray) -> np.ndarray:
        """(trees, rows, outputs) float64, from float32 features (rows, n_features)."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        leaves = self.session.run(None, {"X": x})[0].astype(np.int64)  # (rows, trees)
        return self.values[(leaves + self.offsets).T]
