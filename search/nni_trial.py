"""One trial of an NNI experiment started by ``hwnas experiment``: takes the trial's parameters
from NNI, runs ``hwnas search`` with them against the shared prediction service, and reports
the test accuracy (NNI's "default" metric) with the latency and budget figures.

Run by NNI as ``python -m search.nni_trial --server HOST:PORT -- [hwnas search options]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from search.experiment import GRID_OPTIONS


def trial_argv(search_args: list[str], params: dict, server: str, out_dir: Path) -> list[str]:
    """The ``hwnas search`` command line of a trial with ``params`` (keys of GRID_OPTIONS)."""
    argv = ["search", *search_args, "--server", server, "--out", str(out_dir), "--no-progress"]
    for key, value in params.items():
        if key not in GRID_OPTIONS:
            raise ValueError(f"trial parameter {key!r} is not a search option")
        argv += [GRID_OPTIONS[key], str(value)]
    return argv


def result_of(doc: dict, params: dict) -> dict:
    """NNI's final result from a search's arch.json: numbers, plus the architecture and the
    trial's parameters as JSON (NNI's own record of which trial got which parameters can be
    crossed between trials that start together, so the trial says what it ran)."""
    met = [v for v in doc["budget_met"].values() if v is not None]
    return {"default": doc["test_accuracy"], "val_accuracy": doc["val_accuracy"],
            "predicted_latency_ms": doc["predicted"]["latency_ms"],
            "measured_latency_ms": doc["measured_latency_ms"],
            "budget_met": None if not met else float(all(met)),
            "search_seconds": doc["search_seconds"],
            "arch": json.dumps(doc["arch"], sort_keys=True),
            "params": json.dumps(params, sort_keys=True)}


def main(argv: list[str] | None = None) -> int:
    import nni

    from hwnas.cli import main as hwnas_main

    ap = argparse.ArgumentParser(prog="python -m search.nni_trial")
    ap.add_argument("--server", required=True)
    ap.add_argument("search_args", nargs="*")
    args = ap.parse_args(argv)
    params = nni.get_next_parameter() or {}
    out_dir = Path(os.environ.get("NNI_OUTPUT_DIR", ".")) / "search"
    hwnas_main(trial_argv(args.search_args, params, args.server, out_dir),
               standalone_mode=False)
    doc = json.loads((out_dir / "arch.json").read_text())
    nni.report_final_result(result_of(doc, params))
    print(f"trial {params}: test accuracy {doc['test_accuracy']:.4f}, written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
