"""Plain-text tables and figures for terminal output."""

from __future__ import annotations

from collections.abc import Sequence

import click


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))
    if not rows:
        click.echo("(none)")


def peaks_text(peaks) -> str:
    """A device's peaks (anything with ``metric``, ``value`` and ``unit``: stored rows or
    freshly measured ones) on one line, each with its unit."""
    return ", ".join(f"{p.metric}={p.value:.3g} {p.unit}" for p in peaks)
