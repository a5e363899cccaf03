"""Search, export, retrain and measure.

Strategies: first-order DARTS (softmax-weighted supernet) and Gumbel/ProxylessNAS-style
(straight-through one-hot samples). Budgets (latency ms, power W, energy mJ) are enforced by a
hinge penalty whose multipliers grow by dual ascent while the expected cost is over budget, so
the exported architecture lands under the budget; ``tradeoff`` adds FBNet-style
``w * log(expected latency)`` instead, to trace a Pareto front.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search.cost import METRICS, HardwareCost
from search.data import Data
from search.spaces import SpaceConfig, choices, fixed_network, input_shape
from search.supernet import Supernet


@dataclass
class SearchConfig:
    strategy: str = "darts"  # darts | gumbel
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    arch_lr: float = 0.01
    budgets: dict[str, float] = field(default_factory=dict)  # metric -> budget
    tradeoff: float = 0.0  # FBNet/LA-DARTS weight on log(expected latency)
    dual_lr: float = 2.0
    tau: tuple[float, float] | None = None  # temperature start -> end (default per strategy)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("darts", "gumbel"):
            raise ValueError(f"--strategy: expected darts or gumbel, got {self.strategy!r}")
        for metric, value in self.budgets.items():
            if metric not in METRICS:
                raise ValueError(f"budget: unknown metric {metric!r}")
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"--{metric.replace('_', '-')}: must be a positive number")
        if self.epochs < 1:
            raise ValueError("--epochs: must be at least 1")
        if not (math.isfinite(self.tradeoff) and self.tradeoff >= 0):
            # A negative weight would reward slower networks.
            raise ValueError(f"--tradeoff: must be a non-negative number, got {self.tradeoff}")
        if self.tau is None:
            self.tau = (5.0, 0.5) if self.strategy == "gumbel" else (1.0, 0.1)


@dataclass
class SearchResult:
    arch: dict[str, str]
    probs: dict[str, dict[str, float]]
    predicted: dict[str, float | None]
    search_seconds: float
    hardware_seconds: float
    history: list[dict]
    # Decisions moved off their most likely option so the export meets the budgets.
    repaired: dict[str, str] = field(default_factory=dict)


def _overshoot(pred: dict, budgets: dict[str, float]) -> float:
    """Sum of relative overshoots over the budgets (0 when all are met)."""
    return sum(max(0.0, pred[m] / b - 1.0) for m, b in budgets.items()
               if pred.get(m) is not None)


def export_within(arch: dict[str, str], probs: dict[str, dict[str, float]], hw,
                  budgets: dict[str, float]) -> dict[str, str]:
    """The most likely architecture, moved the least likely distance needed to meet the budgets
    in prediction: while a budget is exceeded, switch the one decision whose change cuts the
    overshoot most per unit of log-probability given up. The penalty acts on the *expected*
    cost during search, so the argmax can end slightly over a budget; this closes that gap.
    Returns ``arch`` unchanged when it meets the budgets, and the best it can reach otherwise."""
    arch = dict(arch)
    over = _overshoot(hw.of_arch(arch), budgets)
    while over > 0:
        best, best_score = None, 0.0
        for label, options in probs.items():
            for name, p in options.items():
                if name == arch[label]:
                    continue
                cand = {**arch, label: name}
                gain = over - _overshoot(hw.of_arch(cand), budgets)
                if gain <= 0:
                    continue
                lost = math.log(max(probs[label][arch[label]], 1e-12)) - math.log(max(p, 1e-12))
                score = gain / max(lost, 1e-6)
                if score > best_score:
                    best, best_score = cand, score
        if best is None:
            break
        arch = best
        over = _overshoot(hw.of_arch(arch), budgets)
    return arch


def _batches(x, y, size, gen):
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), size):
        idx = perm[i:i + size]
        yield x[idx], y[idx]


def search(space: SpaceConfig, data: Data, cost: Callable[[Supernet], HardwareCost] | None,
           cfg: SearchConfig, progress: bool = True) -> SearchResult:
    """Differentiable search; ``cost`` builds the hardware term for the supernet (None: no
    hardware term, the unconstrained baseline)."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    net = Supernet(space)
    hw = cost(net) if cost is not None else None
    if hw is not None and not hw.power_available and (
            {"power_w", "energy_mj"} & set(cfg.budgets)):
        raise ValueError("--power-w/--energy-mj: the device has no measured power, so its "
                         "predictions carry none; use --latency-ms")
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=cfg.lr, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999))
    duals = dict.fromkeys(cfg.budgets, 1.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = tqdm(range(cfg.epochs), desc=f"{cfg.strategy} search", disable=not progress)
    for epoch in bar:
        frac = epoch / max(cfg.epochs - 1, 1)
        tau = cfg.tau[0] * (cfg.tau[1] / cfg.tau[0]) ** frac
        net.train()
        correct = seen = 0
        val_iter = _batches(data.x_val, data.y_val, cfg.batch_size, gen)
        for xb, yb in _batches(data.x_train, data.y_train, cfg.batch_size, gen):
            net.sample(cfg.strategy, tau)
            w_opt.zero_grad()
            out = net(xb)
            F.cross_entropy(out, yb).backward()
            w_opt.step()
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
            try:
                xv, yv = next(val_iter)
            except StopIteration:
                val_iter = _batches(data.x_val, data.y_val, cfg.batch_size, gen)
                xv, yv = next(val_iter)
            net.sample(cfg.strategy, tau)
            a_opt.zero_grad()
            loss = F.cross_entropy(net(xv), yv)
            if hw is not None:
                exp = hw.expected(net)
                for metric, budget in cfg.budgets.items():
                    over = exp[metric] / budget - 1.0
                    loss = loss + duals[metric] * torch.relu(over)
                    duals[metric] = max(0.0, duals[metric] + cfg.dual_lr * float(over.detach()))
                if cfg.tradeoff:
                    loss = loss + cfg.tradeoff * torch.log(exp["latency_ms"])
            loss.backward()
            a_opt.step()
        entry = {"epoch": epoch, "train_acc": correct / max(seen, 1)}
        if hw is not None:
            for m in net.mixed:
                m.weights = None
            with torch.no_grad():
                entry.update({k: float(v) for k, v in hw.expected(net).items()
                              if k == "latency_ms" or hw.power_available})
            entry["argmax_latency_ms"] = hw.of_arch(net.export())["latency_ms"]
        history.append(entry)
        bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k != "epoch"})
    likely, probs = net.export(), net.probs()
    arch = export_within(likely, probs, hw, cfg.budgets) if hw is not None else likely
    predicted = hw.of_arch(arch) if hw is not None else {}
    repaired = {k: v for k, v in arch.items() if likely[k] != v}
    return SearchResult(arch, probs, predicted, time.perf_counter() - t0,
                        hw.seconds if hw is not None else 0.0, history, repaired)


def retrain(space: SpaceConfig, arch: dict[str, str], data: Data, epochs: int = 30,
            seed: int = 0, lr: float = 0.05) -> tuple[torch.nn.Module, float, float]:
    """Train the fixed architecture from scratch on train+val; (model, val acc, test acc)."""
    torch.manual_seed(seed)
    model = fixed_network(space, arch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for xb, yb in _batches(x, y, 64, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        val = float((model(data.x_val).argmax(1) == data.y_val).float().mean())
        test = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    return model, val, test


@dataclass
class Measured:
    """A network measured on a local device: latency (ms, lowest p10 of spread rounds) and,
    where the device's sensors read it, energy per inference (mJ) and power (W). ``calm`` says
    whether the speed probe found the machine at full speed in the round that gave the latency,
    and ``slow_ratio`` how slow it was then (probe window over full speed, 1.0 = full speed);
    both None where no probe ran (a GPU)."""

    latency_ms: float
    energy_mj: float | None
    power_w: float | None
    power_source: str
    device: str
    calm: bool | None = None
    slow_ratio: float | None = None

    def caution(self) -> str | None:
        return slow_caution(self.calm, self.slow_ratio)


def slow_caution(calm: bool | None, slow_ratio: float | None) -> str | None:
    """What to tell the user when a latency was measured while the machine ran slow (the
    caller adds the remedy that fits), else None."""
    if calm is not False:
        return None
    return (f"measured while this machine ran {slow_ratio:.2f}x slower than its full speed "
            f"(speed probe; it waited up to {ONE_OFF_WAIT_S:g} s per round for a calm spell), "
            f"so the latency is likely high")


ONE_OFF_WAIT_S = 5.0  # s per round a one-off measurement waits for a calm machine


def measure_network(model: torch.nn.Module, shape: tuple[int, ...], device=None,
                    min_time_s: float = 0.1, rounds: int = 5, probe=None,
                    input_dtype: str = "float") -> Measured:
    """Measure one forward pass on ``device`` (a collectors ComputeDevice; default this CPU) by
    the collectors' protocol and statistic (with the speed probe on a CPU: ``probe``, e.g. a
    sweep's, which has seen full speed, else a new one judged by this machine's recorded full
    speed), so it compares with what the model learned from; energy over a >= 1 s
    steady-state window from the device's power reader. One measurement is cheap to wait
    for, so each round waits up to :data:`ONE_OFF_WAIT_S` for a calm machine."""
    from collectors.devices import CpuDevice
    from collectors.gemm.backends import backend_for
    from collectors.networks.sweep import forward_pass
    from collectors.probe import SpeedProbe, default_probe
    from collectors.timing import TimingPolicy, energy_window, lowest_round

    device = device or CpuDevice()
    fn, timer = forward_pass(model, shape, device, input_dtype)
    policy = TimingPolicy(min_time_s=min_time_s)
    # On a CPU each round waits for the machine to run at full speed, as the sweeps' do.
    if not default_probe(None, device.info.kind):
        probe = None
    elif probe is None:
        probe = SpeedProbe.for_backend(backend_for("cpu", "torch"))
    latency, calm = lowest_round(fn, timer, policy, rounds, probe=probe,
                                 wait_s=ONE_OFF_WAIT_S)
    power = energy_window(fn, timer, device.power_reader(), latency, policy.power_window_s)
    energy = None if power.energy_j_per_call is None else power.energy_j_per_call * 1e3
    return Measured(latency, energy, power.power_w, power.source,
                    f"{device.info.model} ({device.info.name})",
                    None if calm is None else calm.calm,
                    None if calm is None else round(calm.ratio, 3))


def local_device_for(model_name: str):
    """This machine's device of ``model_name`` that a search result can be measured on (the
    CPU, or an NVIDIA GPU with a CUDA build of torch), or None."""
    from collectors.devices import CpuDevice, DeviceError, detect_devices

    cpu = CpuDevice()
    if cpu.info.model == model_name:
        return cpu
    if not torch.cuda.is_available():
        return None
    try:
        gpus = [d for d in detect_devices() if d.info.kind == "gpu"]
    except DeviceError:
        return None
    return next((d for d in gpus if d.info.model == model_name), None)


def random_arch(space: SpaceConfig, rng: np.random.Generator) -> dict[str, str]:
    return {label: str(rng.choice(opts)) for label, opts in choices(space).items()}


def random_search(space: SpaceConfig, data: Data, hw: HardwareCost, samples: int,
                  budgets: dict[str, float], retrain_epochs: int, seed: int = 0,
                  max_draws: int = 5000) -> tuple[dict[str, str], float, float, int]:
    """Best of ``samples`` random architectures within the budgets (by validation accuracy);
    returns (arch, val acc, test acc, architectures evaluated)."""
    rng = np.random.default_rng(seed)
    best, evaluated = None, 0
    for _ in range(max_draws):
        if evaluated == samples:
            break
        arch = random_arch(space, rng)
        pred = hw.of_arch(arch)
        if any(pred.get(m) is not None and pred[m] > b for m, b in budgets.items()):
            continue
        _, val, test = retrain(space, arch, data, retrain_epochs, seed)
        evaluated += 1
        if best is None or val > best[1]:
            best = (arch, val, test)
    if best is None:
        raise ValueError("random search: no architecture within the budget")
    return best[0], best[1], best[2], evaluated


def export(out_dir: Path, space: SpaceConfig, model: torch.nn.Module, result: dict) -> dict:
    """arch.json (everything a user needs), an exported program (loads with plain torch:
    ``torch.export.load("model.pt2").module()``, any batch size), the state_dict, and ONNX."""
    import io
    import warnings

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(*input_shape(space))
    paths = {"json": out_dir / "arch.json", "program": out_dir / "model.pt2",
             "state_dict": out_dir / "state_dict.pt", "onnx": out_dir / "model.onnx"}
    # Traced at batch 2: an example batch of 1 would fix the batch size at 1.
    batch = torch.export.Dim("batch", max=1 << 16)
    program = torch.export.export(model, (example.expand(2, *example.shape[1:]).clone(),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, paths["program"])
    torch.save(model.state_dict(), paths["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"])
    paths["onnx"].write_bytes(buf.getvalue())
    doc = {"space": space.to_dict(), **result,
           "files": {k: str(v.name) for k, v in paths.items()}}
    paths["json"].write_text(json.dumps(doc, indent=2, default=_jsonable))
    return doc


def _jsonable(v):
    if hasattr(v, "__dataclass_fields__"):
        return asdict(v)
    return float(v)
