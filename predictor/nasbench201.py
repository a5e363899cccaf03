"""NAS-Bench-201 architectures as op lists.

A cell string reads ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: node j sums its edges from the
nodes i < j. The network is NAS-Bench-201's CIFAR macro skeleton: a 3x3 stem to ``channels``,
three stages of ``cells`` cells at ``channels`` x1, x2, x4 with a residual reduction block
between stages, then global pooling and a linear classifier.
"""

from __future__ import annotations

from collectors.networks.cells import EDGE_OPS, parse_cell
from collectors.ops import Op

__all__ = ["EDGE_OPS", "network_ops", "parse_cell"]

def _conv(name, cin, cout, k, hw, stride, dtype, batch) -> Op:
    return Op.make("conv2d", {"in_channels": cin, "out_channels": cout, "kernel": k,
                              "height": hw, "width": hw, "stride": stride, "padding": k // 2},
                   dtype, batch)


def _act_bn(c: int, hw: int, dtype: str, batch: int) -> list[Op]:
    return [Op.make("elementwise", {"elements": c * hw * hw}, dtype, batch),
            Op.make("norm", {"channels": c, "elements": c * hw * hw}, dtype, batch)]


def network_ops(arch: str, batch: int = 1, dtype: str = "fp32", channels: int = 16,
                cells: int = 5, resolution: int = 32, classes: int = 10) -> list[tuple[str, Op]]:
    """(layer name, op) for the whole network: the ops the torch network of
    ``collectors.networks.zoo.nb201_network`` runs (what network sweeps measure and network
    models learn from), including a node's sum as Python's ``sum`` runs it (``0 + e0``, then
    one add per further edge) and a ``none`` edge as its multiply by zero."""
    cell = parse_cell(arch)
    ops: list[tuple[str, Op]] = []
    c, hw = channels, resolution
    ops.append(("stem.conv", _conv("stem", 3, c, 3, hw, 1, dtype, batch)))
    ops.append(("stem.bn", Op.make("norm", {"channels": c, "elements": c * hw * hw}, dtype,
                                   batch)))
    for stage in range(3):
        if stage:
            cout = c * 2
            name = f"reduce{stage}"
            ops += [(f"{name}.a.act", _act_bn(c, hw, dtype, batch)[0]),
                    (f"{name}.a.conv", _conv(name, c, cout, 3, hw, 2, dtype, batch))]
            hw = -(-hw // 2)
            ops += [(f"{name}.a.bn", _act_bn(cout, hw, dtype, batch)[1]),
                    (f"{name}.b.act", _act_bn(cout, hw, dtype, batch)[0]),
                    (f"{name}.b.conv", _conv(name, cout, cout, 3, hw, 1, dtype, batch)),
                    (f"{name}.b.bn", _act_bn(cout, hw, dtype, batch)[1]),
                    (f"{name}.shortcut.pool", Op.make("pool", {"channels": c, "kernel": 2,
                                                               "height": hw * 2, "width": hw * 2,
                                                               "stride": 2}, dtype, batch)),
                    (f"{name}.shortcut.conv", _conv(name, c, cout, 1, hw, 1, dtype, batch)),
                    (f"{name}.add", Op.make("elementwise", {"elements": cout * hw * hw,
                                                           "inputs": 2}, dtype, batch))]
            c = cout
        for i in range(cells):
            prefix = f"stage{stage}.cell{i}"
            for j, edges in enumerate(cell, start=1):
                for n, (name, src) in enumerate(edges):
                    tag = f"{prefix}.node{j}.from{src}"
                    if name in ("nor_conv_1x1", "nor_conv_3x3"):
                        k = 1 if name.endswith("1x1") else 3
                        act, bn = _act_bn(c, hw, dtype, batch)
                        ops += [(f"{tag}.act", act),
                                (f"{tag}.conv", _conv(tag, c, c, k, hw, 1, dtype, batch)),
                                (f"{tag}.bn", bn)]
                    elif name == "avg_pool_3x3":
                        ops.append((f"{tag}.pool", Op.make(
                            "pool", {"channels": c, "kernel": 3, "height": hw, "width": hw,
                                     "padding": 1}, dtype, batch)))
                    elif name == "none":
                        ops.append((f"{tag}.zero", Op.make(
                            "elementwise", {"elements": c * hw * hw}, dtype, batch)))
                    # The running sum: 0 + the first edge (one input), then pairwise adds.
                    ops.append((f"{tag}.add", Op.make(
                        "elementwise", {"elements": c * hw * hw, "inputs": 1 if n == 0 else 2},
                        dtype, batch)))
    ops += [("head.act", _act_bn(c, hw, dtype, batch)[0]),
            ("head.bn", _act_bn(c, hw, dtype, batch)[1]),
            ("head.pool", Op.make("pool", {"channels": c, "kernel": hw, "height": hw,
                                           "width": hw, "stride": hw}, dtype, batch)),
            ("head.linear", Op.make("linear", {"in_features": c, "out_features": classes,
                                               "tokens": 1}, dtype, batch))]
    return ops
