"""Where hwnas keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$XDG_DATA_HOME/hwnas`` (default ``~/.local/share/hwnas``): the default store, model
    files and the speed probe's reference speeds."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return Path(base) / "hwnas"
