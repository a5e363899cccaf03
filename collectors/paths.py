"""Where hwnas keeps its files on this machine."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def data_dir() -> Path:
    """``$XDG_DATA_HOME/hwnas`` (default ``~/.local/share/hwnas``): the default store, model
    files and the speed probe's reference speeds."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return Path(base) / "hwnas"


def write_json(path: Path, doc) -> None:
    """Write ``doc`` as JSON to ``path`` whole: into a new file beside it, then renamed over it,
    so a reader (or a crash) never sees half a file and two writers never share a temporary
    file. Raises OSError where the folder cannot be written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
