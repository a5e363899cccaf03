"""Fast forest inference: a fitted random forest compiled to one ONNX ``TreeEnsembleRegressor``
that returns every tree's output (so uncertainty stays available), run by ONNX Runtime.

Each tree t and output o becomes its own ONNX target ``t * n_outputs + o``. scikit-learn sends a
row left when ``float32(x) <= threshold`` (a float64); ONNX compares in float32, so each
threshold is rounded *down* to the largest float32 not above it, which makes the two comparisons
agree exactly for every float32 input. Leaf values are float32 in ONNX: outputs agree with
scikit-learn to about 1e-7 relative.
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
    """Serialized ONNX model: ``X`` float32 (rows, features) -> ``Y`` (rows, trees*outputs)."""
    from onnx import TensorProto, helper

    n_out = forest.n_outputs_
    attrs: dict[str, list] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
        "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids",
        "target_ids", "target_weights")}
    for t, est in enumerate(forest.estimators_):
        tree = est.tree_
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
        values = tree.value[:, :, 0]  # (nodes, outputs)
        for o in range(n_out):
            attrs["target_treeids"] += [t] * len(leaves)
            attrs["target_nodeids"] += leaves.tolist()
            attrs["target_ids"] += [t * n_out + o] * len(leaves)
            attrs["target_weights"] += values[leaves, o].tolist()
    n_targets = len(forest.estimators_) * n_out
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml",
                            n_targets=n_targets, aggregate_function="SUM",
                            post_transform="NONE", **attrs)
    graph = helper.make_graph(
        [node], "hwnas_forest",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n_targets])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    return model.SerializeToString()


class FastForest:
    """Per-tree outputs of a forest, computed by ONNX Runtime: ``per_tree(F)`` has the same
    shape and values (to ~1e-7) as stacking every scikit-learn tree's predict."""

    def __init__(self, forest: RandomForestRegressor, n_features: int, threads: int = 1):
        import onnxruntime as ort

        self.n_trees = len(forest.estimators_)
        self.n_outputs = forest.n_outputs_
        opts = ort.SessionOptions()
        # One thread is fastest for the small batches a service sees; callers can raise it.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(forest_to_onnx(forest, n_features), opts,
                                            providers=["CPUExecutionProvider"])

    def per_tree(self, features: np.ndarray) -> np.ndarray:
        """(trees, rows, outputs) float64, from float32 features (rows, n_features)."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        y = self.session.run(None, {"X": x})[0].astype(np.float64)
        return y.reshape(len(x), self.n_trees, self.n_outputs).transpose(1, 0, 2)
