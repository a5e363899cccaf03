"""The ``hwnas`` command line, one module per family of commands (each registers its commands
on :data:`main` when imported). Heavy imports (torch, CuPy) happen inside commands so that
``hwnas --help`` stays instant."""

from hwnas.cli import distributed, measure, models, nas, registered, service, store  # noqa: F401
from hwnas.cli.app import main

__all__ = ["main"]
