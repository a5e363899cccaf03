"""The ``hwnas`` group every command hangs from, and what every command shares: one clear line
for the project's own errors (no traceback) and opening the store."""

from __future__ import annotations

import functools

import click
from sqlalchemy.exc import SQLAlchemyError


def friendly_errors(fn):
    """Turn the project's own errors into one clear line and an exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from collectors.devices import DeviceError
        from collectors.gemm.backends import BackendError
        from collectors.ops import OpError
        from collectors.store.db import StoreError
        from predictor.data import DataError
        from predictor.registry import RegistryError

        try:
            return fn(*args, **kwargs)
        except (OpError, BackendError) as exc:
            raise click.UsageError(str(exc)) from None
        except (StoreError, DeviceError, DataError, RegistryError) as exc:
            raise click.ClickException(str(exc)) from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        except SQLAlchemyError as exc:
            first = str(exc).strip().splitlines()[0]
            raise click.ClickException(f"database error: {first}") from None

    return wrapper


def open_store(db_url: str | None):
    from collectors.store.db import Store

    return Store(db_url)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hwnas")
def main() -> None:
    """hwnas: measure GEMMs and networks on CPUs and NVIDIA GPUs, store the measurements,
    predict latency, power and energy from them, serve the predictions over gRPC, and search
    for networks that fit a hardware budget.

    Start with `hwnas demo`: it measures a small GEMM sweep on this CPU, trains a model, serves
    it on a local port and queries it.
    """
