"""kvspec: a formal model of the per-request KV-capacity protocol of LLM-serving KV-cache
managers (TensorRT-LLM's KV cache manager V2), its invariants machine-checked, and
implementations checked against it step for step.

Subpackages: :mod:`kvspec.spec` (the model, prover, walker, traces), :mod:`kvspec.reference`
and :mod:`kvspec.gpu_impl` (implementations), :mod:`kvspec.conformance` (the checks).
Shared vocabulary here: :mod:`kvspec.config`, :mod:`kvspec.policy`, :mod:`kvspec.errors`;
the command line is :mod:`kvspec.cli`. Importing ``kvspec`` imports nothing else, so the CLI
starts fast; ``kvspec.__version__`` is read from the installed distribution when first asked.
"""

from __future__ import annotations

__all__ = ["__version__", "version"]


def version() -> str:
    """The installed ``kvspec`` distribution's version (``unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kvspec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'kvspec' has no attribute {name!r}")
