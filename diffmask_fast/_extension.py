"""Loading of the compiled operators (``diffmask_fast._C``).

The extension is compiled against one torch release; importing it under another fails with
undefined symbols or, worse, loads and misbehaves. Both cases become an ImportError that says
how to rebuild. Only ``diffmask_fast.ops`` imports this module; ``diffmask_fast.reference``
never does.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

REBUILD_HINT = (
    "Rebuild it against the installed torch from the repository root with "
    "`pip install --no-build-isolation -e .` (or `make build`)."
)

#: The environment variable that caps the CPU kernels, and what it may name: the widest the
#: operators may run (``_C.cpu_kernels`` names those they run: the CPU may have fewer). Narrower
#: ones let one machine test every path.
CPU_KERNELS_VARIABLE = "DIFFMASK_FAST_CPU_KERNELS"
CPU_KERNELS = ("avx512", "avx2", "none")

_module: ModuleType | None = None


def load() -> ModuleType:
    """Import ``diffmask_fast._C`` once (registering ``torch.ops.diffmask_fast``) and return it."""
    global _module
    if _module is not None:
        return _module
    allowed = os.environ.get(CPU_KERNELS_VARIABLE, "")
    if allowed and allowed not in CPU_KERNELS:
        raise ValueError(f"{CPU_KERNELS_VARIABLE} must be one of {', '.join(CPU_KERNELS)} (or unset), got {allowed!r}")
    try:
        module = importlib.import_module("diffmask_fast._C")
    except (ImportError, OSError) as error:
        raise ImportError(
            f"diffmask_fast's compiled extension diffmask_fast._C could not be loaded ({error}). " + REBUILD_HINT
        ) from error
    built_for = getattr(module, "torch_version", None)
    if built_for != torch.__version__:
        raise ImportError(
            f"diffmask_fast._C was built for torch {built_for}, but torch {torch.__version__} is installed. "
            + REBUILD_HINT
        )
    _module = module
    return module


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether ``diffmask_fast::<op_name>`` has a compiled kernel for a device type ('cpu', 'cuda')."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"diffmask_fast::{op_name}", key)
    except RuntimeError:  # no such operator
        return False
