"""Measure a searched network on a device, later or elsewhere: a search can run on a laptop
against the prediction service's model of a GPU, and the network it found is then measured on
that GPU by the same protocol a search uses (``search.run.measure_network``), and compared
with what was predicted and with the budgets.

Only the architecture file (``arch.json``) is needed: the network is rebuilt from its space
and choices (latency does not depend on the trained weights), so neither NNI nor the
prediction service has to be installed where it is measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from collectors.paths import write_json
from search.spaces import SpaceConfig, fixed_network, input_shape

METRICS = ("latency_ms", "energy_mj", "power_w")


@dataclass
class Verification:
    """One measurement of a searched network against its prediction and budgets."""

    device: str  # "model (name)" as measured
    device_model: str
    predicted_for: str  # the device model the search predicted for
    measured: dict  # latency_ms, energy_mj, power_w (None where unreadable), power_source
    predicted: dict
    budgets: dict
    budget_met: dict  # metric -> bool, or None where the device could not measure it
    at: str
    prediction_method: str = ""  # how the search's costs were made (older files: unknown)

    @property
    def same_device(self) -> bool:
        return self.device_model == self.predicted_for

    def ratios(self) -> dict[str, float]:
        """measured / predicted, per metric both have."""
        return {k: self.measured[k] / self.predicted[k] for k in METRICS
                if self.measured.get(k) is not None and self.predicted.get(k)}

    def to_dict(self) -> dict:
        return {"device": self.device, "device_model": self.device_model, "at": self.at,
                "measured": self.measured, "ratios_to_predicted": self.ratios(),
                "budget_met": self.budget_met}


def arch_file(path: str | Path) -> Path:
    """``arch.json`` itself, or the search's output folder holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / "arch.json"
    if not p.is_file():
        raise ValueError(f"ARCH: {p} does not exist (give a search's --out folder or its "
                         "arch.json)")
    return p


def read_arch(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"ARCH: {path} is not JSON ({exc})") from None
    for key in ("space", "arch"):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"ARCH: {path} has no {key!r} object (not a `hwnas search` "
                             "output?)")
    return doc


def verify(path: str | Path, device_name: str = "cpu", min_time_s: float = 0.1,
           rounds: int = 5, record: bool = True) -> Verification:
    """Rebuild the network of ``path`` (an arch.json or its folder), measure it on
    ``device_name`` (``cpu`` or ``cuda:N``) and compare; with ``record``, append the result
    to the file's ``verifications`` list."""
    p = arch_file(path)
    doc = read_arch(p)
    try:
        space = SpaceConfig(**doc["space"])
    except TypeError as exc:
        raise ValueError(f"space: {exc}") from None
    model = fixed_network(space, doc["arch"])
    device = _device(device_name)
    label, measured = _measure(model, space, device, min_time_s, rounds)
    budgets = dict(doc.get("budgets") or {})
    met = {k: None if measured.get(k) is None else bool(measured[k] <= v)
           for k, v in budgets.items()}
    result = Verification(label, device.info.model, str(doc.get("device")), measured,
                          dict(doc.get("predicted") or {}), budgets, met,
                          datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          str(doc.get("prediction_method") or ""))
    if record:
        doc.setdefault("verifications", []).append(result.to_dict())
        write_json(p, doc)
    return result


def _device(device_name: str):
    """This machine's ``cpu`` or ``cuda:N``, checked to be measurable by torch."""
    from collectors.devices import get_device

    device = get_device(device_name)
    if device.info.kind == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_name}: torch {torch.__version__} has no CUDA; "
                             "measuring on a GPU needs a CUDA build of torch")
    return device


def _measure(net, space: SpaceConfig, device, min_time_s: float, rounds: int
             ) -> tuple[str, dict]:
    """The device as measured ("model (name)") and the network's latency_ms, energy_mj,
    power_w (None where unreadable) and power_source, by the search's protocol, with how calm
    the machine was (``calm``, ``slow_ratio``: see search.run.Measured)."""
    from search.run import measure_network

    m = measure_network(net, input_shape(space), device, min_time_s, rounds)
    return m.device, {"latency_ms": m.latency_ms, "energy_mj": m.energy_mj,
                      "power_w": m.power_w, "power_source": m.power_source,
                      "calm": m.calm, "slow_ratio": m.slow_ratio}


def pareto_file(path: str | Path) -> Path | None:
    """The ``pareto.json`` of a `hwnas search --pareto` output (the file or its folder), or
    None when ``path`` is not one."""
    p = Path(path)
    if p.is_dir() and not (p / "arch.json").exists():
        p = p / "pareto.json"
    return p if p.name == "pareto.json" and p.is_file() else None


def verify_pareto(path: Path, device_name: str = "cpu", min_time_s: float = 0.1,
                  rounds: int = 5, record: bool = True) -> tuple[list[dict], Path]:
    """Measure every architecture of a Pareto run (its searches and random picks) on
    ``device_name``; with ``record``, appends each measurement to its point in pareto.json;
    draws the measured front (``pareto_measured.png`` beside it). Returns one row per point
    (label, predicted and measured latency in ms, test accuracy, calm, slow_ratio) and the
    plot's path."""
    from search.job import Outcome, plot_pareto

    try:
        doc = json.loads(path.read_text())
        space = SpaceConfig(**doc["space"])
        groups = {g: list(doc[g]) for g in ("search", "random")}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"ARCH: {path} is not a `hwnas search --pareto` output "
                         f"({type(exc).__name__}: {exc})") from None
    device = _device(device_name)
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows, outcomes = [], {g: [] for g in groups}
    for group, points in groups.items():
        for point in points:
            label, measured = _measure(fixed_network(space, point["arch"]), space, device,
                                       min_time_s, rounds)
            point.setdefault("verifications", []).append(
                {"device": label, "at": at, **measured})
            ms = measured["latency_ms"]
            rows.append({"label": point["label"], "group": group,
                         "predicted_ms": point["predicted"]["latency_ms"],
                         "measured_ms": ms, "test_acc": point["test_acc"],
                         "calm": measured["calm"], "slow_ratio": measured["slow_ratio"]})
            outcomes[group].append(Outcome(point["label"], point["arch"], point["predicted"],
                                           ms, point["val_acc"],
                                           point["test_acc"], 0.0, 0.0))
    if record:
        write_json(path, doc)
    plot = path.with_name("pareto_measured.png")
    plot_pareto(outcomes["search"], outcomes["random"], plot,
                f"{device.info.model} (predicted for {doc.get('device')})")
    return rows, plot
