"""Lazy access to NVML (the ``pynvml`` module of nvidia-ml-py).

NVML is optional: on a machine without an NVIDIA driver, :func:`get_nvml` returns ``None`` and
the reason is kept in :data:`unavailable_reason`. Tests swap in a fake module with
:func:`set_nvml`.
"""

from __future__ import annotations

from typing import Any

_nvml: Any = None
_tried = False
unavailable_reason: str | None = None


def set_nvml(module: Any) -> None:
    """Use ``module`` as pynvml (a fake in tests); ``None`` forgets and re-probes next time."""
    global _nvml, _tried, unavailable_reason
    _nvml, _tried, unavailable_reason = module, module is not None, None
    if module is not None:
        module.nvmlInit()


def get_nvml() -> Any | None:
    global _nvml, _tried, unavailable_reason
    if _tried:
        return _nvml
    _tried = True
    try:
        import pynvml
    except ImportError:
        unavailable_reason = "nvidia-ml-py is not installed (pip install 'hwnas[gpu]')"
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        unavailable_reason = f"NVML could not start: {exc}"
        return None
    _nvml = pynvml
    return _nvml


def text(value: Any) -> str:
    """NVML returns bytes on old bindings and str on new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def call(fn_name: str, *args: Any, default: Any = None) -> Any:
    """Call an NVML function, returning ``default`` when it or the query is not supported."""
    nvml = get_nvml()
    if nvml is None or not hasattr(nvml, fn_name):
        return default
    try:
        return getattr(nvml, fn_name)(*args)
    except Exception:
        return default
