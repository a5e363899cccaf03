"""A user's own torch model, named as ``package.module:NAME`` (an ``nn.Module``, a module class
or a function returning one, called without arguments), imported and built here."""

from __future__ import annotations

import importlib
import os
import sys


def user_module(spec: str):
    """The ``torch.nn.Module`` that ``spec`` names; ValueError saying what is wrong with it (the
    user's own code failing included), never a traceback of ours. Modules are found in the
    current directory too, as ``python -m`` finds them (the ``hwnas`` command alone would not
    look there), after the installed packages."""
    import torch

    path, _, name = spec.partition(":")
    if not path or not name:
        raise ValueError(f"{spec!r}: expected PACKAGE.MODULE:NAME")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    try:
        obj = getattr(importlib.import_module(path), name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{spec!r}: {type(exc).__name__}: {exc} (looked in the current "
                         f"directory, {here}, and the installed packages)") from None
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{spec!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ValueError(f"{spec!r}: {name} is neither a torch module nor callable")
        try:
            obj = obj()
        except Exception as exc:  # the user's own code: say where it failed
            raise ValueError(f"{spec!r}: {name}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        raise ValueError(f"{spec!r}: {name}() returned a {type(obj).__name__}, not a "
                         "torch.nn.Module")
    return obj


def parse_input_shape(text: str) -> tuple:
    """``"1,3,224,224"`` -> (1, 3, 224, 224); a model that takes several tensors gives one
    shape each, joined by '+': ``"1,128+1,128"`` -> ((1, 128), (1, 128)). ValueError unless
    positive integers."""
    shapes = []
    for part in text.split("+"):
        try:
            shape = tuple(int(x) for x in part.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise ValueError(f"positive integers, batch first, e.g. 1,3,224,224 (one shape per "
                             f"input joined by '+', e.g. 1,128+1,128); got {text!r}")
        shapes.append(shape)
    return shapes[0] if len(shapes) == 1 else tuple(shapes)
