"""NAS-Bench-201 cell strings: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, where node j sums one
edge from each earlier node i < j."""

from __future__ import annotations

import re

from collectors.ops import OpError

EDGE_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_NODE = re.compile(r"^\|([a-z0-9_]+~\d+\|)+$")


def parse_cell(arch: str) -> list[list[tuple[str, int]]]:
    """Edges per node: ``[[(op, from)], [(op, from), (op, from)], ...]``."""
    text = arch.strip()
    nodes = text.split("+")
    if len(nodes) != 3 or not all(_NODE.match(n) for n in nodes):
        raise OpError("nasbench201", f"malformed cell string {arch!r}; expected "
                      "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    cell = []
    for j, node in enumerate(nodes, start=1):
        edges = []
        for part in node.strip("|").split("|"):
            name, _, src = part.partition("~")
            if name not in EDGE_OPS:
                raise OpError("nasbench201", f"unknown op {name!r}; choose from "
                              f"{', '.join(EDGE_OPS)}")
            edges.append((name, int(src)))
        if sorted(s for _, s in edges) != list(range(j)):
            raise OpError("nasbench201", f"node {j} must have one edge from each of nodes "
                          f"0..{j - 1}, got {node!r}")
        cell.append(edges)
    return cell
