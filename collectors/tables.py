"""Reading a table file a user names (an export, a public data set, a latency table)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_table_file(path: str | Path, **csv_options) -> pd.DataFrame:
    """The table in ``path``: Parquet when its suffix says so, else CSV (``csv_options`` go to
    ``pandas.read_csv``). A file that does not parse is a ValueError naming it and the format
    it was read as, not the parser's bare message."""
    parquet = Path(path).suffix.lower() in (".parquet", ".pq")
    try:
        return pd.read_parquet(path) if parquet else pd.read_csv(path, **csv_options)
    except (ValueError, OSError) as exc:  # pandas' and pyarrow's parse errors derive from these
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not readable as {'Parquet' if parquet else 'CSV'} "
                         f"({first})") from None
