"""Scale-out: run many ``hwnas search`` jobs (budgets x trade-offs x seeds x strategies) as the
trials of one NNI experiment. NNI's local training service runs them as processes on this
machine; its remote training service spreads them over machines reached by SSH. Every trial
asks the same prediction service for costs, so all machines search against one model."""

from __future__ import annotations

import atexit
import itertools
import json
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Options of `hwnas search` that the experiment varies across trials, in NNI search-space form.
GRID_OPTIONS = {"latency_ms": "--latency-ms", "tradeoff": "--tradeoff", "seed": "--seed",
                "strategy": "--strategy"}
# Options the experiment sets itself for every trial.
RESERVED_OPTIONS = ("--out", "--server", "--pareto", "--no-progress", "--db")


@dataclass
class Machine:
    """A remote machine for NNI's remote training service (reached by SSH)."""

    host: str
    user: str
    port: int = 22

    @classmethod
    def parse(cls, spec: str) -> Machine:
        """``user@host[:port]``."""
        user, sep, rest = spec.partition("@")
        host, _, port = rest.partition(":")
        if not sep or not user or not host:
            raise ValueError(f"--machine {spec!r}: expected user@host[:port]")
        try:
            p = int(port) if port else 22
        except ValueError:
            raise ValueError(f"--machine {spec!r}: port must be a number") from None
        if not 0 < p < 65536:
            raise ValueError(f"--machine {spec!r}: port out of range")
        return cls(host, user, p)


@dataclass
class ExperimentSpec:
    """What to run: ``search_args`` go to every trial's ``hwnas search``; ``grid`` maps a key of
    GRID_OPTIONS to the values tried (the experiment runs their full product)."""

    search_args: list[str]
    grid: dict[str, list]
    server: str
    concurrency: int = 1
    max_trials: int | None = None
    training_service: str = "local"
    machines: list[Machine] = field(default_factory=list)
    ssh_key: str | None = None
    python: str = sys.executable
    manager_ip: str | None = None
    work_dir: Path = Path("hwnas-experiment")

    def __post_init__(self) -> None:
        from search.run import SearchConfig

        for key, values in self.grid.items():
            if key not in GRID_OPTIONS:
                raise ValueError(f"grid: unknown option {key!r} (one of {sorted(GRID_OPTIONS)})")
            if not values:
                raise ValueError(f"{GRID_OPTIONS[key]}: at least one value")
            for value in values:  # a bad value is refused here, not as a failed trial
                SearchConfig(**({"budgets": {key: value}} if key == "latency_ms"
                                else {key: value}))
        for arg in self.search_args:
            name = arg.split("=", 1)[0]
            if name in RESERVED_OPTIONS:
                raise ValueError(f"search option {name} is set by the experiment itself")
            if name in {GRID_OPTIONS[k] for k in self.grid}:
                raise ValueError(f"{name} is given both as a search option and as an "
                                 "experiment grid")
        if self.training_service not in ("local", "remote"):
            raise ValueError("--training-service: local or remote")
        if self.training_service == "remote":
            if not self.machines:
                raise ValueError("--training-service remote needs at least one --machine")
            host = self.server.rpartition(":")[0]
            if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
                raise ValueError("--server: remote trials cannot reach a loopback address; "
                                 "give the host:port of a `hwnas serve --host 0.0.0.0` they "
                                 "can reach")

    def trial_count(self) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n if self.max_trials is None else min(n, self.max_trials)

    def search_space(self) -> dict:
        """NNI search space: a choice per varied option (GridSearch walks the product)."""
        return {k: {"_type": "choice", "_value": list(v)} for k, v in self.grid.items()}

    def trial_command(self) -> str:
        return " ".join([shlex.quote(self.python), "-m", "search.nni_trial",
                         "--server", shlex.quote(self.server), "--",
                         *map(shlex.quote, self.search_args)])

    def nni_experiment(self):
        """The configured ``nni.experiment.Experiment`` (not started)."""
        from nni.experiment import Experiment, RemoteMachineConfig

        exp = Experiment(self.training_service)
        c = exp.config
        c.experiment_name = "hwnas-search"
        c.trial_command = self.trial_command()
        # Trials run the installed package, so they need no code of their own; an empty
        # folder keeps NNI from uploading whatever the current directory holds.
        code_dir = self.work_dir / "trial-code"
        code_dir.mkdir(parents=True, exist_ok=True)
        c.trial_code_directory = str(code_dir.resolve())
        c.experiment_working_directory = str((self.work_dir / "nni").resolve())
        c.search_space = self.search_space()
        c.tuner.name = "GridSearch"
        c.max_trial_number = self.trial_count()
        c.trial_concurrency = self.concurrency
        if self.manager_ip:
            c.nni_manager_ip = self.manager_ip
        if self.training_service == "remote":
            c.training_service.machine_list = [
                RemoteMachineConfig(host=m.host, port=m.port, user=m.user,
                                    ssh_key_file=self.ssh_key, python_path=None)
                for m in self.machines]
        return exp


def grid_points(spec: ExperimentSpec) -> list[dict]:
    """Every combination of the grid, in NNI GridSearch's terms (for display and tests)."""
    keys = list(spec.grid)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(spec.grid[k] for k in keys))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# NNI trial statuses after which a trial runs no more.
ENDED = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}


@dataclass
class TrialOutcome:
    trial_id: str
    status: str
    params: dict
    result: dict | None
    folder: str | None  # NNI trial folder: its logs, and search/ with the exported network


def start_experiment(spec: ExperimentSpec, port: int | None = None, attempts: int = 4):
    """Start the NNI experiment of ``spec`` and return it.

    NNI gives its manager (a Node.js process) about three seconds to answer before it gives up,
    which a busy machine can miss; each failed start kills that process, so trying again on a
    fresh port is safe.
    """
    for attempt in range(1, attempts + 1):
        exp = spec.nni_experiment()
        try:
            exp.start(port or free_port())
            return exp
        except OSError as exc:  # requests' ConnectionError is an OSError
            # NNI's start() registered stop() to run at exit and has killed the manager: the
            # hook would only log into streams that are closed by then.
            atexit.unregister(exp.stop)
            if attempt == attempts:
                raise RuntimeError(f"NNI's manager did not start ({attempts} attempts): "
                                   f"{exc}") from exc
            time.sleep(2.0 * attempt)


def run_experiment(spec: ExperimentSpec, port: int | None = None, progress: bool = True,
                   poll_s: float = 2.0) -> list[TrialOutcome]:
    """Start the experiment, wait for every trial (progress bar), stop it, and return each
    trial's parameters and reported result (None for a failed trial)."""
    from collectors.sweep import progress_bar

    exp = start_experiment(spec, port)
    total = exp.config.max_trial_number
    try:
        with progress_bar(total, 0, progress, unit="trial", desc="NNI trials") as bar:
            seen = 0
            while True:
                status = exp.get_status()
                jobs = exp.list_trial_jobs()
                ended = [j for j in jobs if j.status in ENDED]
                bar.update(len(ended) - seen)
                seen = len(ended)
                if status in ("DONE", "STOPPED", "ERROR") or (
                        status in ("NO_MORE_TRIAL", "TUNER_NO_MORE_TRIAL") and jobs
                        and len(ended) == len(jobs)):
                    break
                time.sleep(poll_s)
        outcomes = [_outcome(j) for j in exp.list_trial_jobs()]
        if status == "ERROR" and not outcomes:
            raise RuntimeError(f"NNI experiment {exp.id} failed; its log is under "
                               f"{exp.config.experiment_working_directory}/{exp.id}/log")
    finally:
        exp.stop()
    return sorted(outcomes, key=lambda o: o.trial_id)


def _outcome(job) -> TrialOutcome:
    params = job.hyperParameters[0].parameters if job.hyperParameters else {}
    result = None
    for m in job.finalMetricData or []:
        value = json.loads(m.data) if isinstance(m.data, str) else m.data
        if isinstance(value, str):  # NNI stores the reported dict JSON-encoded twice
            value = json.loads(value)
        result = value if isinstance(value, dict) else {"default": value}
    if result and "params" in result:
        params = json.loads(result.pop("params"))
    return TrialOutcome(job.trialJobId, job.status, params, result, job.logPath)


def write_report(outcomes: list[TrialOutcome], spec: ExperimentSpec, out_dir: Path) -> Path:
    """experiment.json with every trial, and a plot of accuracy against latency."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"training_service": spec.training_service, "server": spec.server,
           "search_args": spec.search_args, "grid": spec.grid,
           "trials": [o.__dict__ for o in outcomes]}
    path = out_dir / "experiment.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    done = [o for o in outcomes if o.result]
    if done:
        _plot(done, out_dir / "experiment.png")
    return path


def _latency(r: dict) -> float:
    m = r.get("measured_latency_ms")
    return m if m is not None else r["predicted_latency_ms"]


def _plot(done: list[TrialOutcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    x = [_latency(o.result) for o in done]
    y = [o.result["default"] * 100 for o in done]
    ax.plot(x, y, "o")
    for o, xi, yi in zip(done, x, y, strict=True):
        label = ", ".join(f"{k}={v}" for k, v in o.params.items())
        ax.annotate(label, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    measured = all(o.result.get("measured_latency_ms") is not None for o in done)
    ax.set_xlabel("latency (ms, measured)" if measured else "latency (ms, predicted if not "
                                                              "measured)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("hwnas search trials (NNI experiment)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
