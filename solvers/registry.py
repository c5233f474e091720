"""The registry of sampling methods: name -> (function, options with defaults).

A method is a plain function ``fn(sde, score_fn, x, *, steps, eps, generator, progress, **options)``
returning the final sample, or ``(sample, info)`` with a dict of solver statistics. ``steps`` is
None when the caller gave none (the method uses its own default).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sde_diffusion.core.registry import Registry

MethodFn = Callable[..., Any]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    options: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = False
    description: str = ""

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``; unknown option names raise ``ValueError``."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; known: {known}")
        return {**self.options, **given}


METHODS: Registry[Method] = Registry("sampling method")


def register_method(
    name: str, *, options: dict[str, Any] | None = None, deterministic: bool = False
) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering a sampling function under ``name`` with its options and defaults.
    The description shown by ``solvers.available()`` is the docstring's first line."""

    def add(fn: MethodFn) -> MethodFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        METHODS.register(name)(Method(name, fn, dict(options or {}), deterministic, doc[0] if doc else ""))
        return fn

    return add
