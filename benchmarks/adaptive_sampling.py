"""Learning curve of adaptive against uniform random sampling, on this machine, in one run.

Both samplers draw from the same pool of random GEMM shapes. Every config of the pool and the
test set is measured up front, on this CPU or ``--on cuda:N``, with the sweeps' protocol
(``--rounds`` interleaved rounds, each over all configs in a new random order; a config's
latency is its lowest round p10; on a CPU each measurement goes through the speed probe of
collectors.probe unless ``--no-probe``; a GPU is timed with CUDA events, its calls queued back
to back as in the sweeps), and both samplers read those figures (same device, same moment); the
adaptive sampler only sees what it asked for. After each round a forest is fitted on what each
sampler has measured and scored on a separate test set of random shapes. Both samplers run
``--repeats`` times with different seeds (the uniform draw order, the adaptive seed set and
forests) and the curves are averaged, so one lucky draw does not decide. Prints the mean share
within ±10% and MAPE against the number of measurements, and how many measurements the adaptive
sampler needed to reach the uniform sampler's final share (target: at most half), with how far
that figure moves on seeds resampled with replacement; and the share of a forest fitted on the
whole pool, where both curves head as the budget grows.

    python benchmarks/adaptive_sampling.py [--budget 200] [--round 10] [--pool 600] [--test 150]
                                           [--rounds 3] [--repeats 5] [--threads 1] [--csv F]
                                           [--latencies FILE] [--pool-seed 1] [--test-seed 2]
                                           [--plot F.png] [--on cuda:0] [--aligned 0.5]
                                           [--batched 0.25 --max-batch 64]

With ``--exports F1,F2`` it replays on measurements taken elsewhere (a GPU's GEMMs, from
`hwnas db export`): a random ``--test-share`` of their shapes is the test set, the rest the
pool, and each sampler reads the latencies of the configs it asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

from collectors.devices import DeviceError, get_device
from collectors.gemm.backends import backend_for
from collectors.ops import Op
from collectors.peaks import measure_peaks
from collectors.probe import SpeedProbe, measure_when_calm
from collectors.sweep import progress_bar
from collectors.timing import TimingPolicy, time_kernel
from predictor.adaptive import AdaptiveSampler, candidate_pool
from predictor.data import frame_from_exports
from predictor.evaluate import dtypes_seen, metrics
from predictor.features import DeviceProfile
from predictor.forest import GEMM_COLUMNS, GemmCostForest

# A config's key in the latency cache, in ``Op.gemm``'s order. Files written before batched
# configs have no batch column: their configs are single GEMMs.
CONFIG_KEY = ["m", "n", "k", "dtype", "batch"]


def config_key(row) -> tuple:
    """The cache key of a row (of itertuples) of a pool, test set or latency file."""
    return int(row.m), int(row.n), int(row.k), row.dtype, int(getattr(row, "batch", 1))


def plot_curves(curves: dict[str, list[tuple[int, dict]]], final: float, whole: float,
                path: str, title: str) -> None:
    """Share within ±10% against measurements for each sampler, with uniform's final share and
    a whole-pool forest's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([n for n, _ in curve], [m["within_10"] for _, m in curve], marker=".",
                label=name)
    ax.axhline(final, color="grey", linestyle=":", label="uniform's final share")
    ax.axhline(whole, color="grey", linestyle="--", label="forest on the whole pool")
    ax.set_xlabel("configs measured")
    ax.set_ylabel("held-out configs within ±10% (%)")
    ax.set_title(title, fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_curve(curves: list[dict[int, dict]]) -> dict[int, float]:
    """The mean share within ±10% at each number of measurements, over the curves (one per
    seed: scores by configs measured) that reached it."""
    sizes = sorted(set().union(*curves))
    return {n: float(np.mean([c[n]["within_10"] for c in curves if n in c])) for n in sizes}


def reach_fraction(adaptive: list[dict[int, dict]], uniform: list[dict[int, dict]]) -> float:
    """Measurements at which the mean adaptive curve first reaches the mean uniform curve's
    final share, as a fraction of uniform's last size (inf: never)."""
    ada, uni = mean_curve(adaptive), mean_curve(uniform)
    final = uni[max(uni)]
    reach = next((n for n in sorted(ada) if ada[n] >= final), None)
    return np.inf if reach is None else reach / max(uni)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--round", type=int, default=10)
    ap.add_argument("--pool", type=int, default=600)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--pool-seed", type=int, default=1, help="seed of the pool's random shapes")
    ap.add_argument("--test-seed", type=int, default=2, help="seed of the test set's shapes")
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--min-size", type=int, default=16)
    ap.add_argument("--max-size", type=int, default=1024)
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="s of timed repetitions per config and round")
    ap.add_argument("--aligned", type=float, default=0.0,
                    help="share of the random shapes with dimensions multiples of 8..128 "
                         "(as in the GPU sweeps' GEMM_ALIGNED)")
    ap.add_argument("--batched", type=float, default=0.0,
                    help="share of the random shapes run as a batch of 2..--max-batch GEMMs "
                         "(as `hwnas collect gemm --batched`)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--on", default="cpu",
                    help="where to measure: cpu or cuda:N (N: a GPU of this machine)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds over all configs; latency = lowest round p10")
    ap.add_argument("--no-probe", action="store_true",
                    help="measure without the speed probe (collectors.probe)")
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5, help="sampler seeds to average over")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: all); with --on cpu")
    ap.add_argument("--csv", default=None, help="also write the curves to this CSV file")
    ap.add_argument("--plot", default=None, help="also draw the curves into this PNG file")
    ap.add_argument("--latencies", default=None,
                    help="CSV of measured latencies (and FILE.peaks.json, FILE.profile.json): "
                         "read if it exists (no measuring), else written after measuring, so "
                         "samplers can be compared on one data set; a stopped measurement "
                         "resumes from FILE.partial; each round's figures end in "
                         "FILE.rounds.csv")
    ap.add_argument("--exports", default=None,
                    help="comma-separated `hwnas db export` files (a GPU's GEMMs, say): replay "
                         "on their measurements instead of measuring here; a random "
                         "--test-share of their shapes is the test set, the rest the pool "
                         "(--pool, --dtypes, the sizes and the measuring options do not apply)")
    ap.add_argument("--device", default=None,
                    help="with --exports: the device model, where the files hold several")
    ap.add_argument("--test-share", type=float, default=0.25,
                    help="with --exports: share of the shapes held out as the test set")
    ap.add_argument("--oracle", action="store_true",
                    help="also run the adaptive sampler given the forest's true squared error "
                         "on every pool config (it reads the pool's labels) instead of its "
                         "variance across trees: what a perfect uncertainty estimate would gain")
    args = ap.parse_args()
    made = from_exports(args) if args.exports else measure_here(args)
    run_and_report(args, *made)


def from_exports(args) -> tuple[DeviceProfile, pd.DataFrame, pd.DataFrame, dict, str]:
    """Pool, test set and latencies from measured export files: whole shapes held out."""
    frame, profile = frame_from_exports(args.exports.split(","), args.device)
    # One latency per config (a config measured twice, on two GPUs of one model: the median).
    frame = frame.groupby(GEMM_COLUMNS, as_index=False).latency_ms.median()
    shape = ["m", "n", "k", "batch"]
    shapes = frame[shape].drop_duplicates().to_numpy()
    rng = np.random.default_rng(args.test_seed)
    held = shapes[rng.permutation(len(shapes))[:round(args.test_share * len(shapes))]]
    is_test = pd.MultiIndex.from_frame(frame[shape]).isin(pd.MultiIndex.from_arrays(held.T))
    cache = {config_key(r): float(r.latency_ms) for r in frame.itertuples()}
    pool = frame.loc[~is_test, GEMM_COLUMNS].reset_index(drop=True)
    test = frame.loc[is_test, GEMM_COLUMNS].reset_index(drop=True)
    source = (f"{profile.model} ({profile.kind}), replayed from {args.exports}; dtypes "
              f"{','.join(sorted(frame.dtype.unique()))}; {len(held)} of {len(shapes)} shapes "
              f"held out (seed {args.test_seed})")
    return profile, pool, test, cache, source


def measure_here(args):
    """Pool and test set of random shapes, measured on this CPU or ``--on cuda:N`` (or read
    from --latencies)."""
    dtypes = args.dtypes.split(",")
    replay = bool(args.latencies) and os.path.exists(args.latencies)
    profile_file = f"{args.latencies}.profile.json" if args.latencies else None
    if replay and os.path.exists(profile_file):
        # The measuring device's profile (a GPU's, say), whatever machine replays it.
        with open(profile_file) as f:
            profile = DeviceProfile.from_dict(json.load(f))
        device, backend, probe = None, None, None
    else:
        try:
            device = get_device(args.on)
        except DeviceError as exc:
            raise SystemExit(str(exc).replace("--device", "--on")) from None
        kind = device.info.kind
        backend = (backend_for(kind, index=getattr(device, "index", 0)) if kind == "gpu"
                   else backend_for("cpu", "torch", threads=args.threads))
        # The probe judges a CPU's phases of slowness; GPU clocks are steady (collectors.probe).
        probe = (None if replay or args.no_probe or kind == "gpu"
                 else SpeedProbe.for_backend(backend))
        peaks_file = f"{args.latencies}.peaks.json" if args.latencies else None
        if peaks_file and os.path.exists(peaks_file):  # also CPU files from before profiles
            with open(peaks_file) as f:
                peaks = json.load(f)
        else:
            peaks = {p.metric: p.value
                     for p in measure_peaks(device, backend, dtypes, probe=probe)}
            if peaks_file:
                with open(peaks_file, "w") as f:
                    json.dump(peaks, f)
        profile = DeviceProfile(device.info.model, kind, device.info.sm_count or 1, peaks)
        if profile_file and not replay:
            with open(profile_file, "w") as f:
                json.dump(profile.to_dict(), f)
    policy = TimingPolicy(min_time_s=args.min_time)
    shapes = {"aligned": args.aligned, "batched": args.batched, "max_batch": args.max_batch}
    pool = candidate_pool(args.pool, args.min_size, args.max_size, dtypes, seed=args.pool_seed,
                          **shapes)
    test = candidate_pool(args.test, args.min_size, args.max_size, dtypes,
                          seed=args.test_seed, **shapes)
    cols = CONFIG_KEY
    keys = sorted({config_key(r) for r in pool.itertuples()}
                  | {config_key(r) for r in test.itertuples()})
    cache = {key: np.inf for key in keys}
    t0 = time.perf_counter()
    if replay:
        stored = pd.read_csv(args.latencies)
        cache.update({config_key(r): float(r.latency_ms) for r in stored.itertuples()})
        missing = [k for k, v in cache.items() if not np.isfinite(v)]
        if missing:
            raise SystemExit(f"{args.latencies} lacks {len(missing)} configs of this pool/test")
    else:
        # Each measurement is appended to FILE.partial as it is taken, so a run that is stopped
        # (they last up to an hour on a busy VM) resumes where it was: same shuffled rounds,
        # minus what the partial file holds.
        partial = f"{args.latencies}.partial" if args.latencies else os.devnull
        done = set()
        started = partial != os.devnull and os.path.exists(partial) and os.path.getsize(partial)
        if started:
            for r in pd.read_csv(partial).itertuples():
                key = config_key(r)
                cache[key] = min(cache[key], float(r.latency_ms))
                done.add((key, int(r.round)))
            print(f"resuming from {partial}: {len(done)} measurements taken before")
        rng = np.random.default_rng(0)
        with (progress_bar(len(keys) * args.rounds, len(done), True, unit="measurement",
                           desc="measuring pool and test") as bar,
              open(partial, "a") as log):
            if not started:
                log.write(",".join([*cols, "round", "latency_ms"]) + "\n")
            for rnd in range(args.rounds):
                for i in rng.permutation(len(keys)):
                    if (keys[i], rnd) in done:
                        continue
                    prep = backend.prepare(Op.gemm(*keys[i]))
                    value, _ = measure_when_calm(
                        lambda p=prep: time_kernel(p.fn, p.timer, policy).p10_ms, float, probe)
                    cache[keys[i]] = min(cache[keys[i]], value)
                    log.write(",".join(map(str, [*keys[i], rnd, value])) + "\n")
                    log.flush()
                    bar.update(1)
        if args.latencies:
            pd.DataFrame([(*k, v) for k, v in cache.items()],
                         columns=[*cols, "latency_ms"]).to_csv(args.latencies, index=False)
            # Every round's figure stays beside the kept lowest: how much rounds differ is
            # the measurement's dispersion.
            os.replace(partial, f"{args.latencies}.rounds.csv")
    measured_s = time.perf_counter() - t0
    if replay:  # how it was measured is in the file's notes, not in these arguments
        source = f"{profile.model}, replayed from {args.latencies}, dtypes {args.dtypes}"
    else:
        source = (f"{profile.model}, {backend.name}, dtypes {args.dtypes}; {len(cache)} "
                  f"distinct configs measured in {args.rounds} interleaved rounds in "
                  f"{measured_s:.0f} s")
    return profile, pool, test, cache, source


def run_and_report(args, profile: DeviceProfile, pool: pd.DataFrame, test: pd.DataFrame,
                   cache: dict, source: str) -> None:
    """Both samplers over the pool, scored on the test set; prints and writes the curves."""
    pool_keys = [config_key(r) for r in pool.itertuples()]
    test_y = np.array([cache[config_key(r)] for r in test.itertuples()])

    def score(measured: dict[int, float]) -> dict[str, float]:
        idx = np.fromiter(measured, dtype=int)
        model = GemmCostForest(profile=profile.to_dict(), n_estimators=args.trees)
        model.fit(pool.iloc[idx], np.array([measured[i] for i in idx]))
        seen = dtypes_seen(test, pool.iloc[idx])
        if seen.all():
            return metrics(test_y, model.predict(test))
        # A dtype not measured yet cannot be predicted (the model refuses it): its test rows
        # count as misses, and the other figures are undefined.
        m = metrics(test_y[seen], model.predict(test[seen]))
        return {**{k: float("nan") for k in m}, "n": len(test_y),
                "within_10": m["within_10"] * seen.mean()}

    def true_error(model: GemmCostForest, frame: pd.DataFrame) -> np.ndarray:
        """The oracle's covering weights: the forest's squared log error on ``frame``."""
        y = np.array([cache[config_key(r)] for r in frame.itertuples()])
        return np.log(model.predict(frame) / y) ** 2

    # Per sampler, per seed: the scores after each round, by the number of configs measured.
    seed_curves: dict[str, list[dict[int, dict]]] = {"adaptive": [], "uniform": []}
    if args.oracle:
        seed_curves["oracle"] = []
    for rep in range(args.repeats):
        for name, seeds in seed_curves.items():
            sampler = AdaptiveSampler(profile, pool, seed=rep,
                                      seed_share=1.0 if name == "uniform" else 0.1,
                                      trees=args.trees,
                                      **({"weights": true_error} if name == "oracle" else {}))

            def measure(indices):
                return {i: cache[pool_keys[i]] for i in indices}

            own: dict[int, dict] = {}
            seeds.append(own)

            def record(measured, own=own):
                if len(measured) >= 10:
                    own[len(measured)] = score(measured)

            sampler.run(measure, args.budget, args.round, on_round=record)
    def summary(ms: list[dict]) -> dict[str, float]:
        """Means over sampler seeds, and the standard error of the mean share within ±10%."""
        out = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
        shares = [m["within_10"] for m in ms]
        out["within_10_sem"] = float(np.std(shares, ddof=1) / np.sqrt(len(shares))
                                     if len(shares) > 1 else np.nan)
        return out

    curves = {name: [(n, summary([c[n] for c in seeds if n in c]))
                     for n in sorted(set().union(*seeds))]
              for name, seeds in seed_curves.items()}

    print(f"{source}; pool {len(pool)} configs, test {len(test)} configs; curves: mean of "
          f"{args.repeats} seeds")
    oracle = dict(curves.get("oracle", []))
    print(f"{'measured':>9}  {'adaptive ±10%':>13} {'MAPE':>6}   {'uniform ±10%':>12} {'MAPE':>6}"
          + (f"   {'oracle ±10%':>12} {'MAPE':>6}" if oracle else ""))
    ada, uni = dict(curves["adaptive"]), dict(curves["uniform"])

    def cell(m: dict | None, width: int) -> str:
        return f"{m['within_10']:>{width}.1f}% {m['mape']:>5.1f}%" if m else " " * (width + 8)

    for n in sorted(set(ada) | set(uni)):
        print(f"{n:>9}  {cell(ada.get(n), 12)}   {cell(uni.get(n), 11)}"
              + (f"   {cell(oracle.get(n), 11)}" if oracle else ""))
    final_n, final = curves["uniform"][-1]
    ratio = reach_fraction(seed_curves["adaptive"], seed_curves["uniform"])
    print(f"standard error over seeds of the share within ±10% at {final_n}: adaptive "
          f"{ada[final_n]['within_10_sem']:.1f}, uniform {final['within_10_sem']:.1f} points")
    if np.isinf(ratio):
        print(f"adaptive never reached uniform's final {final['within_10']:.1f}% within ±10%")
    else:
        print(f"adaptive reached uniform's final {final['within_10']:.1f}% (at {final_n}) with "
              f"{round(ratio * final_n)} measurements: {ratio:.2f} of them (target <= 0.5: "
              f"{'met' if ratio <= 0.5 else 'NOT met'})")
    # The verdict hangs on small differences where both curves are flat: how far the seeds
    # drawn could move it shows in the same verdict on seeds resampled with replacement.
    rng = np.random.default_rng(0)
    draws = np.array([reach_fraction(*(
        [c[i] for i in rng.integers(len(c), size=len(c))]
        for c in (seed_curves["adaptive"], seed_curves["uniform"]))) for _ in range(1000)])
    low, mid, high = (np.quantile(draws, q, method="nearest") for q in (0.1, 0.5, 0.9))

    def fraction(x: float) -> str:
        return "never" if np.isinf(x) else f"{x:.2f}"

    print(f"the same on seeds resampled with replacement (1,000 draws): median {fraction(mid)}, "
          f"10th-90th percentile {fraction(low)}-{fraction(high)}, at most half in "
          f"{100 * np.mean(draws <= 0.5):.0f}% of draws")
    if oracle:
        print("the oracle (covering weighted by the forest's true squared error) reaches "
              "uniform's final share with "
              f"{fraction(reach_fraction(seed_curves['oracle'], seed_curves['uniform']))} of "
              "the measurements")
    # Where the curves head as the budget grows to the whole pool: how much room uniform's
    # final share leaves for a sampler to get there sooner.
    whole = score({i: cache[key] for i, key in enumerate(pool_keys)})
    print(f"a forest on the whole pool ({len(pool)} configs): {whole['within_10']:.1f}% within "
          f"±10% ({whole['mape']:.1f}% MAPE)")
    if args.plot:
        plot_curves(curves, final["within_10"], whole["within_10"], args.plot,
                    f"{','.join(sorted(pool.dtype.unique()))} on {profile.model}: pool "
                    f"{len(pool)}, test {len(test)}, mean of {args.repeats} seeds")
        print(f"plot written to {args.plot}")
    if args.csv:
        pd.DataFrame([{"sampler": k, "measured": n, **m} for k, v in curves.items()
                      for n, m in v]).to_csv(args.csv, index=False)
        print(f"curves written to {args.csv}")


if __name__ == "__main__":
    main()
