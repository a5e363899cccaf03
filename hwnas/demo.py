"""The main job on embedded defaults: measure, train, serve, query, stop."""

from __future__ import annotations

import click

from hwnas.cli.costs import LATENCY_EXTRAPOLATED
from hwnas.gemm_job import GemmJob
from hwnas.output import print_table

DEMO_ARCH = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+"
             "|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
DEMO_NETWORKS = 8  # NAS-Bench-201 networks measured for the network model
DEMO_MAX_SIZE = 512  # the sweep's largest dimension
DEMO_SHAPES = [(64, 64, 64, "fp32"), (256, 256, 256, "fp32"), (384, 128, 768, "fp32"),
               (1024, 1024, 1024, "fp32"), (256, 256, 256, "bf16")]


def fit_network_model(job: GemmJob) -> None:
    """Measure DEMO_NETWORKS sampled NAS-Bench-201 CIFAR networks (those the store lacks) and
    fit and register the device's network model: without one, a network is costed as a sum of
    GEMM predictions, which leaves out the framework's per-layer cost."""
    from collectors.networks.sweep import network_plan
    from hwnas.calibrate import measure_missing
    from predictor import network

    plan = [c for c in network_plan(["nb201"], DEMO_NETWORKS + 1, 1, seed=0)
            if c["arch"] != DEMO_ARCH][:DEMO_NETWORKS]
    # The GEMM sweep's speed probe has seen this machine at full speed; a new one has not.
    measured, earlier, failed = measure_missing(job.store, job.device, plan,
                                                probe=job.runner.probe())
    row, metrics = network.train_and_register(job.store, job.device.info.model, dtype="fp32")
    held = metrics["held_out"]
    click.echo(f"{measured} networks measured now, {earlier} stored earlier, {failed} failed; "
               f"registered network model v{row.version} ({metrics['networks']} networks): "
               f"held-out within ±10% {held['within_10']:.0f}%, RMSPE {held['rmspe']:.1f}%")


def measure_demo_network(job: GemmJob):
    """DEMO_ARCH measured on this CPU as a search measures its result (not stored), judged
    calm by the GEMM sweep's speed probe (a search.run.Measured)."""
    from collectors.networks.zoo import nb201_network
    from search.run import measure_network

    return measure_network(nb201_network(DEMO_ARCH), (1, 3, 32, 32), job.device,
                           probe=job.runner.probe())


def run_demo(db_url: str | None) -> None:
    from hwnas.client import PredictorClient
    from hwnas.service.engine import PredictionEngine
    from hwnas.service.server import Server, ServerConfig
    from predictor.training import train_and_register

    click.echo("1/5 measure: a small GEMM sweep on this CPU", err=True)
    job = GemmJob.from_options(db_url=db_url, device_name="cpu", dtypes="fp32,bf16",
                               shape_set="grid", min_size=32, max_size=DEMO_MAX_SIZE, points=3,
                               min_time=0.1, power_window=1.0, progress=True,
                               skip_unsupported_dtypes=True)
    job.describe_device()
    job.print_summary(job.run(measure_missing_peaks=True))

    click.echo("\n2/5 train: latency forest, evaluated on held-out shapes", err=True)
    model = job.device.info.model
    row, ev = train_and_register(job.store, model, n_splits=3, n_estimators=100)
    kfold = ev.tables()["shape-held-out (GroupKFold)"]
    overall = kfold[(kfold.target == "latency_ms") & (kfold.dtype == "all")].iloc[0]
    click.echo(f"registered {model} v{row.version}: held-out shapes MAPE {overall.mape:.1f}%, "
               f"within ±10% {overall.within_10:.0f}%, Spearman {overall.spearman:.3f} "
               f"({ev.n_rows} measurements; a demo-sized sweep, see benchmarks/ for more)")

    click.echo(f"\n3/5 networks: {DEMO_NETWORKS} sampled NAS-Bench-201 networks on this CPU, and "
               "the network model", err=True)
    fit_network_model(job)

    click.echo("\n4/5 serve: gRPC service on a free local port", err=True)
    server = Server(PredictionEngine(job.store), ServerConfig(port=0)).start()
    try:
        with PredictorClient(f"127.0.0.1:{server.port}") as client:
            client.wait_ready(60)
            click.echo(f"5/5 query 127.0.0.1:{server.port} through the Python client", err=True)
            # Only the dtypes this CPU measured (bf16 where it runs it): the model refuses others.
            shapes = [s for s in DEMO_SHAPES if s[3] in row.meta["dtypes"]]
            answer = client.predict_gemm(model, shapes)
            rows = [[f"{m}x{n}x{k}", dtype, f"{c.latency_ms:.4g} ± {c.latency_std_ms:.2g}"
                     + (" *" if c.latency_extrapolated else ""),
                     "unavailable" if c.power_w is None else f"{c.power_w:.3g}",
                     "unavailable" if c.energy_j is None else f"{c.energy_j:.3g}"]
                    for (m, n, k, dtype), c in zip(shapes, answer.costs, strict=True)]
            click.echo(f"\npredictions for {answer.device} (model v{answer.model_version}):")
            print_table(["gemm", "dtype", "latency ms", "power W", "energy J"], rows)
            if any(c.latency_extrapolated for c in answer.costs):
                click.echo(f"* {LATENCY_EXTRAPOLATED} (the demo's sweep stops at "
                           f"{DEMO_MAX_SIZE}): measure such shapes before trusting these")
            net = client.predict_network(model, nasbench201=DEMO_ARCH)
            m = measure_demo_network(job)
            click.echo(f"\nNAS-Bench-201 network {DEMO_ARCH} (not one of the "
                       f"{DEMO_NETWORKS} measured)\n  {len(net.layers)} layers: predicted "
                       f"{net.total.latency_ms:.4g} ms ± {net.total.latency_std_ms:.2g} "
                       f"({net.method}); measured here {m.latency_ms:.4g} ms "
                       f"(x{m.latency_ms / net.total.latency_ms:.2f})")
            caution = m.caution()
            if caution:
                click.echo(f"  caution: {caution}; the comparison holds on a quiet machine")
    finally:
        server.stop(1)
    click.echo("server stopped")
