"""GEMM shapes from a CSV file (columns m, n, k and optionally dtype, batch, layout), checked
cell by cell: what ``hwnas collect gemm --shapes-csv`` measures and ``hwnas predict gemm
--shapes-csv`` predicts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from collectors.ops import MAX_DIM, OpError, check_dtype_column

LAYOUTS = ("nn", "nt", "tn", "tt")
OPTIONAL = ("dtype", "batch", "layout")  # columns that fall back to the command's options


def cell(path: str, column: str, row: int) -> str:
    """A cell of a shapes file as errors name it: rows numbered as a spreadsheet numbers them
    below the header (the first is 1)."""
    return f"{path} row {row + 1}, column {column}"


def read_gemm_csv(path: str, dtype: str, layout: str, batch: str = "1") -> pd.DataFrame:
    """The GEMMs of a CSV file with columns m, n, k and optionally dtype, batch and layout
    (``nn`` .. ``tt``; the arguments where a column is absent or a cell empty), as a
    validated frame of int64 m, n, k, batch, trans_a, trans_b and lower-case dtype;
    ``frame.attrs["given"]`` lists the optional columns the file has. A bad cell raises
    :class:`OpError` naming the file, its row (the first below the header is 1) and the
    column."""
    try:
        raw = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise OpError("--shapes-csv", f"cannot read {path}: {exc}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in ("m", "n", "k") if c not in raw.columns]
    if missing:
        raise OpError("--shapes-csv", f"{path} needs columns m, n and k (and may have "
                      f"{', '.join(OPTIONAL)}); it has no {', '.join(missing)} (columns: "
                      f"{', '.join(raw.columns) or 'none'})")
    if raw.empty:
        raise OpError("--shapes-csv", f"{path} holds no GEMMs")

    def name(column: str, row: int) -> str:
        return cell(path, column, row)

    def text(column: str, default: str) -> np.ndarray:
        if column not in raw.columns:
            return np.full(len(raw), default)
        return raw[column].fillna(default).str.strip().str.lower().replace("", default).to_numpy()

    cols = {}
    for c in ("m", "n", "k", "batch"):
        values = text(c, str(batch).strip() if c == "batch" else "")
        number = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(number) | (number != np.round(number))
                             | (number <= 0))
        if len(bad):
            i = int(bad[0])
            raise OpError(name(c, i), f"must be a positive integer, got {values[i]!r}")
        big = np.flatnonzero(number > MAX_DIM)
        if len(big):
            i = int(big[0])
            raise OpError(name(c, i), f"must be at most {MAX_DIM}, got {values[i]!r}")
        cols[c] = number.astype(np.int64)
    cols["dtype"] = text("dtype", dtype.strip().lower())
    check_dtype_column(cols["dtype"], lambda row: name("dtype", row))  # dimensions: above
    given = text("layout", layout)
    unknown = np.flatnonzero(~np.isin(given, LAYOUTS))
    if len(unknown):
        i = int(unknown[0])
        raise OpError(name("layout", i), f"expected one of {', '.join(LAYOUTS)}, got "
                      f"{given[i]!r}")
    given = given.astype(str)
    cols["trans_a"] = np.char.startswith(given, "t").astype(np.int64)
    cols["trans_b"] = np.char.endswith(given, "t").astype(np.int64)
    frame = pd.DataFrame(cols)
    frame.attrs["given"] = [c for c in OPTIONAL if c in raw.columns]
    return frame
