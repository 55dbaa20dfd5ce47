"""The model families ws-convert grows natively, one data file each: a
family's whole layout is in its file, and adding a family is adding a file
(and a test case in tests/test_families.py)."""

from __future__ import annotations

import importlib
import pkgutil

from ..architectures import Architecture

# Read by tensor names alone when a checkpoint says no model_type, in this order.
BY_NAMES = ("gpt2", "llama", "mup-gpt")


def _load() -> tuple[tuple[Architecture, ...], dict[str, str]]:
    """Every family file's layouts, and the model_types a file refuses (with why)."""
    found, refused = [], {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        data = importlib.import_module(f"{__name__}.{module}")
        found += data.ARCHITECTURES
        refused.update(getattr(data, "REFUSED", {}))
    return tuple(sorted(found, key=lambda a: (a.name not in BY_NAMES, a.name))), refused


ALL, REFUSED = _load()
NAMES = sorted({*(a.name for a in ALL), *(n for a in ALL for n in a.aliases), "generic"})


def by_name(name: str) -> tuple[Architecture, ...]:
    """The layouts of the family called `name` (an alias counts); () for 'generic'."""
    if name == "generic":
        return ()
    found = tuple(a for a in ALL if name == a.name or name in a.aliases)
    if not found:
        raise KeyError(name)
    return found


def of_model_type(model_type: str) -> tuple[Architecture, ...]:
    """The layouts that describe a config's model_type."""
    return tuple(a for a in ALL if model_type in a.model_types)
