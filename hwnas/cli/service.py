"""The prediction service and its clients: ``hwnas serve`` and ``hwnas query gemm|network``."""

from __future__ import annotations

import functools

import click

from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.costs import cost_line, echo_network, network_spec, padding_hint, shapes_with_padding
from hwnas.cli.options import (
    DB_OPTION,
    OUT_OPTION,
    SHAPES_CSV_OPTION,
    network_options,
    server_options,
)


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    with open(path) as f:
        token = f.read().strip()
    if not token:
        raise click.UsageError(f"--token-file {path}: the file is empty")
    return token


@main.command()
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the service to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True,
              help="0 picks a free port (printed).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Require 'authorization: Bearer <token>' with the token in this file.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Expose Prometheus metrics over HTTP on this port.")
@click.option("--max-batch", type=click.IntRange(1, 10_000_000), default=10_000,
              show_default=True, help="Most shapes/ops in one request.")
@click.option("--max-network-ops", type=click.IntRange(1, 10_000_000), default=100_000,
              show_default=True,
              help="Most ops in one network (PredictNetwork): a recurrent layer runs an op or "
                   "three per step.")
@click.option("--workers", type=click.IntRange(1, 1024), default=16, show_default=True)
@friendly_errors
def serve(db_url, host, port, tls_cert, tls_key, token_file, metrics_port, max_batch,
          max_network_ops, workers) -> None:
    """Serve predictions over gRPC (hwnas.v1.Predictor, with health and reflection) until
    SIGTERM/Ctrl-C, then drain in-flight calls and exit 0. New model versions registered by
    `hwnas train` are picked up without a restart."""
    import logging

    from hwnas.service.engine import PredictionEngine
    from hwnas.service.server import Server, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's schema check, per start
    config = ServerConfig(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                          token=read_token(token_file), metrics_port=metrics_port,
                          max_batch=max_batch, max_network_ops=max_network_ops,
                          workers=workers)
    server = Server(PredictionEngine(open_store(db_url)), config).start()
    click.echo(f"hwnas.v1.Predictor listening on {host}:{server.port} "
               f"({'TLS' if tls_cert else 'plaintext'}"
               f"{', token required' if config.token else ''})", err=True)
    server.serve_forever()
    click.echo("drained; bye", err=True)


def service_client(server, token_file, tls_ca, timeout):
    from hwnas.client import PredictorClient

    return PredictorClient(server, token=read_token(token_file), tls_ca=tls_ca,
                           timeout_s=timeout)


def rpc_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import grpc

        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None

    return wrapper


@main.group()
def query() -> None:
    """Ask a running prediction service (see `hwnas serve`)."""


@query.command("gemm")
@server_options
@click.option("--device", required=True, help="Device model (or a unique part of its name).")
@click.option("--m", "m", type=int, default=None)
@click.option("--n", "n", type=int, default=None)
@click.option("--k", "k", type=int, default=None)
@click.option("--dtype", default="fp32", show_default=True,
              help="The GEMM's dtype (with --shapes-csv: of rows that name none).")
@click.option("--batch", type=int, default=1, show_default=True,
              help="GEMMs of this shape in one batched call (strided batched GEMM; with "
                   "--shapes-csv: of rows that name none).")
@SHAPES_CSV_OPTION
@OUT_OPTION
@click.option("--chunk", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="With --shapes-csv: GEMMs per request, at most the service's --max-batch.")
@click.option("--version", type=click.IntRange(min=0), default=0,
              help="Model version to answer from (default 0: the device's default version).")
@friendly_errors
@rpc_errors
def query_gemm(server, token_file, tls_ca, timeout, device, m, n, k, dtype, batch, shapes_csv,
               out, chunk, version) -> None:
    """Latency, power and energy of one GEMM from the service (and, for operand rows that are
    not multiples of 8, what padding them would gain, where it would); of many with
    --shapes-csv, sent as columns --chunk at a time (a CSV out)."""
    from hwnas.cli.gemm_csv import shapes_from_options

    shapes = shapes_from_options(shapes_csv, m, n, k, out, dtype, "nn", batch)
    if shapes is not None:
        _query_many(service_client(server, token_file, tls_ca, timeout), device, shapes, out,
                    chunk, version)
        return
    padded, dims = shapes_with_padding((m, n, k))
    shapes = [{"m": d[0], "n": d[1], "k": d[2], "dtype": dtype, "batch": batch} for d in dims]
    with service_client(server, token_file, tls_ca, timeout) as c:
        a = c.predict_gemm(device, shapes, model_version=version)
    click.echo(f"{a.device} (model v{a.model_version})")
    click.echo(cost_line(f"gemm {m}x{n}x{k} {dtype} batch {batch}", a.costs[0]))
    pad = a.costs[-1]
    hint = padding_hint((m, n, k), padded, a.costs[0].latency_ms, pad.latency_ms,
                        pad.latency_extrapolated)
    if hint:
        click.echo(f"  ({hint})")


def _query_many(client, device: str, shapes, out: str | None, chunk: int,
                version: int = 0) -> None:
    """Every GEMM of ``shapes`` from the service, all from model ``version`` (0: the version
    that answered the first request), written as CSV."""
    import numpy as np

    from hwnas.cli.gemm_csv import cost_columns, echo_batch_summary, write_costs_csv

    parts: list[dict] = []
    with client:
        for start in range(0, len(shapes), chunk):
            part = shapes.iloc[start:start + chunk]
            parts.append(client.predict_gemm_columns(
                device, part.m.to_numpy(), part.n.to_numpy(), part.k.to_numpy(),
                dtype=part.dtype.tolist(), batch=part.batch.to_numpy(),
                trans_a=part.trans_a.to_numpy(), trans_b=part.trans_b.to_numpy(),
                model_version=parts[0]["model_version"] if parts else version))
    costs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]
             if isinstance(parts[0][name], np.ndarray)}
    write_costs_csv(shapes, cost_columns(costs), out)
    echo_batch_summary(f"{parts[0]['device']} (model v{parts[0]['model_version']})",
                       len(shapes), int(costs["latency_extrapolated"].sum()),
                       "power_w" in costs, out)


@query.command("models")
@server_options
@click.option("--device", default="", help="Only this device model's (or a unique part of its "
              "name); default: every device the service has a model for.")
@friendly_errors
@rpc_errors
def query_models(server, token_file, tls_ca, timeout, device) -> None:
    """The models a running service answers from, as `hwnas models` lists a store's: the
    default version of each device and kind (its highest not retired) is marked, and so are
    retired ones."""
    import json

    from hwnas.cli.registered import held_out_scores
    from hwnas.output import print_table

    with service_client(server, token_file, tls_ca, timeout) as c:
        models = c.list_models(device)
    print_table(["device model", "version", "target", "samples", "power", "held-out MAPE %",
                 "within ±10% %", "created (UTC)", "sha256", "default"],
                [[m.device, m.version, m.target, m.training_samples,
                  "yes" if m.has_power else "no",
                  *held_out_scores({"metrics": json.loads(m.metrics_json or "{}")}),
                  m.created_utc[:16].replace("T", " "), m.sha256[:12],
                  "yes" if m.latest else f"{', '.join(m.default_for_dtypes)} networks"
                  if m.default_for_dtypes else "retired" if m.retired else ""]
                 for m in models])


@query.command("network")
@server_options
@click.option("--device", required=True, help="Device model (or a unique part of its name).")
@network_options
@click.option("--version", type=click.IntRange(min=0), default=0,
              help="Model version to answer from, as `hwnas predict network --version` "
                   "(default 0: the device's default version).")
@friendly_errors
@rpc_errors
def query_network(server, token_file, tls_ca, timeout, device, arch, ops_json, module_spec,
                  input_shape, input_dtype, batch, dtype, layers, version) -> None:
    """Whole-network latency, power and energy from the service."""
    spec = network_spec(arch, ops_json, module_spec, input_shape, input_dtype, dtype)
    with service_client(server, token_file, tls_ca, timeout) as c:
        a = c.predict_network(device, nasbench201=spec.arch, ops=spec.ops, batch=batch,
                              dtype=dtype or "fp32", model_version=version)
    echo_network(a, layers, spec.notes)
