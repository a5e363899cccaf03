"""Interleaved rounds: a sweep measures every config once per round, each round in a new random
order, and a config's row keeps the figures of its fastest round: the round with the lowest
fastest-decile latency (``Measurement.latency_ms``, the statistic models learn).

Why: on shared or virtual CPUs the machine's speed drifts in phases of seconds (other tenants,
frequency, steal time), so one measurement of a config lands in a fast or a slow phase by
chance; on the 2-core development VM two passes over the same 50 GEMMs differed by 1-15%
(median, depending on the day). The lowest round median over three rounds spread across the
sweep repeated within ~0.6-2% on a calm day and 1-3% on a busy one, with tails of 15-30%; the
lowest round p10 repeats within ~1% with a tail of about 5% on the busy day: it is the latency
of the config when the machine is not disturbed, which is what a model of the hardware should
learn. Every round's figures stay in ``params["rounds"]`` (dispersion across rounds in
``params["round_spread"]``), and the row of each config is committed after every round, so a
killed sweep resumes at the round it was in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import select

from collectors.store.db import Store
from collectors.store.models import Measurement, utcnow

T = TypeVar("T")

# What one round measures; the row keeps these from its fastest round.
ROUND_FIELDS = ("latency_ms_median", "latency_ms_p10", "latency_ms_p90", "latency_ms_mean",
                "latency_ms_std", "repetitions", "tflops", "power_w", "energy_j",
                "power_source", "power_window_s", "sm_clock_mhz", "mem_clock_mhz",
                "temperature_c", "throttle_reasons")
ROUND_PARAMS = ("inner_calls", "timer", "state_after", "power_note", "power_duty", "probe")


def round_record(row: Measurement) -> dict:
    """One round of ``row`` as stored in ``params["rounds"]`` (latencies in ms)."""
    if row.status != "ok":
        return {"error": row.error, "at": utcnow().isoformat()}
    return {"median_ms": row.latency_ms_median, "p10_ms": row.latency_ms_p10,
            "p90_ms": row.latency_ms_p90, "repetitions": row.repetitions,
            "power_w": row.power_w, "at": utcnow().isoformat(),
            **({"calm": row.params["probe"]["calm"]} if "probe" in (row.params or {}) else {})}


def _summarise(params: dict, records: list[dict]) -> dict:
    medians = [r["median_ms"] for r in records if "median_ms" in r]
    return {**params, "rounds": records,
            "latency_statistic": f"lowest p10 of {len(medians)} interleaved rounds",
            "round_spread": max(medians) / min(medians) - 1}


def is_calm(params: dict | None) -> bool | None:
    """Whether a stored config has a round measured at full speed (collectors.probe): its
    latency, the fastest round's, is then at most that round's; None when no probe ran."""
    params = params or {}
    records = [r for r in params.get("rounds") or [] if "calm" in r]
    if records:
        return any(r["calm"] for r in records)
    probe = params.get("probe")
    return None if probe is None else bool(probe["calm"])


def not_calm_count(store: Store, sweep_id: int) -> int:
    """Configs of a sweep stored with a probe but without a round at full speed."""
    with store.session() as s:
        rows = s.scalars(select(Measurement.params).where(Measurement.sweep_id == sweep_id,
                                                          Measurement.status == "ok"))
        return sum(is_calm(p) is False for p in rows)


def rounds_done(store: Store, sweep_id: int, rounds: int) -> dict[str, int]:
    """Rounds each config of the sweep has finished; a failed or skipped config is final."""
    with store.session() as s:
        rows = s.execute(select(Measurement.config_key, Measurement.status, Measurement.params)
                         .where(Measurement.sweep_id == sweep_id))
        return {key: (len((params or {}).get("rounds") or [None]) if status == "ok"
                      else rounds) for key, status, params in rows}


def merge_round(store: Store, sweep_id: int, key: str, new: Measurement) -> None:
    """Add round ``new`` to the stored row of ``key``: its record is appended, and its figures
    replace the row's when its fastest decile is the lowest so far."""
    with store.session() as s:
        row = s.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id,
                                                  Measurement.config_key == key)
                        .with_for_update()).one()
        params = dict(row.params or {})
        records = list(params.get("rounds") or [round_record(row)])
        records.append(round_record(new))
        if new.status == "ok" and new.latency_ms < row.latency_ms:
            for name in ROUND_FIELDS:
                setattr(row, name, getattr(new, name))
            params.update({k: v for k, v in (new.params or {}).items() if k in ROUND_PARAMS})
        row.params = _summarise(params, records)
        s.commit()


def run_rounds(store: Store, sweep_id: int, items: Sequence[tuple[str, T]], rounds: int,
               done: dict[str, int], measure: Callable[[T], Measurement],
               commit_first: Callable[[Measurement], None], advance: Callable[[], None]) -> None:
    """Measure every ``(config_key, item)`` ``rounds`` times, a round at a time, skipping the
    rounds ``done`` (from :func:`rounds_done`) says are finished. ``commit_first`` stores a
    config's first round; ``advance`` is called after every measurement (progress)."""
    for r in range(rounds):
        todo = [(key, item) for key, item in items if done.get(key, 0) == r]
        # Random order in every round, the only one too: drift (temperature, clocks, a
        # neighbour's load) then lands on configs at random, and a sweep cut short has
        # measured a random subset of its plan rather than its first corner.
        random.Random(f"{sweep_id}:{r}").shuffle(todo)
        for key, item in todo:
            row = measure(item)
            if r == 0:
                if rounds > 1 and row.status == "ok":
                    row.params = _summarise(dict(row.params or {}), [round_record(row)])
                commit_first(row)
            else:
                merge_round(store, sweep_id, key, row)
            done[key] = rounds if r == 0 and row.status != "ok" else r + 1
            advance()


def rounds_progress(done: dict[str, int], keys: Sequence[str], rounds: int) -> tuple[int, int]:
    """(configs finished in every round, measurements already made), for a progress bar."""
    return (sum(done.get(k, 0) >= rounds for k in keys),
            sum(min(done.get(k, 0), rounds) for k in keys))


def default_rounds(rounds: int | None, device_kind: str) -> int:
    """``rounds`` if given, else 3 on a CPU (drifting host) and 1 on a GPU (steady clocks;
    its energy windows make each pass long)."""
    if rounds is not None:
        return rounds
    return 3 if device_kind == "cpu" else 1


def sweep_rounds(config: dict) -> int:
    """Rounds a sweep was created with (its stored timing policy); 1 for older sweeps."""
    return int((config.get("policy") or {}).get("rounds", 1))
