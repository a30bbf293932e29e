"""Which C++ standards the extension's sources are checked under.

setup.py names no standard: torch's BuildExtension adds the one its headers need, C++17 up to
torch 2.11 and C++20 from 2.12, and from 2.14 those headers refuse C++17. The checks that compile
the sources against torch's headers outside a build (test_cuda_build, test_portable_build) follow
the same rule, so that they compile what a build of this torch compiles.
"""

from __future__ import annotations

import torch
from torch.torch_version import TorchVersion

TORCH = TorchVersion(torch.__version__)


def built_with() -> str:
    """The standard torch's BuildExtension compiles the extension under here."""
    return "c++20" if TORCH >= (2, 12) else "c++17"


def accepted_by_torch() -> list[str]:
    """Every standard torch's headers accept here: C++17 still matters to users of older torch."""
    return ["c++20"] if TORCH >= (2, 14) else ["c++17", "c++20"]
