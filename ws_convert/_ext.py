"""The compiled core, when it was built: `cpu` and `cuda` are modules or None.

The package works without them (the PyTorch reference takes over, slower),
so an import failure here is not an error; `why_missing` says what happened.
"""

from __future__ import annotations

import importlib
from types import ModuleType

why_missing: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"ws_convert.{name}")
    except ImportError as exc:  # not built, or its runtime is missing
        why_missing[name] = str(exc)
        return None


cpu: ModuleType | None = _load("_C")
cuda: ModuleType | None = _load("_C_cuda")
