"""The declared sampler contract: each method is one ``Method`` spec, registered once.

A spec states what the method is (torchdiffeq style): its family, which fixes what ``steps``,
``eps``, ``t_start`` and ``schedule`` mean; its typed options, from which ``resolve``, the
validation, the error messages and the ``config.sampling.<method>`` groups are generated; its
default step count; its capabilities as functions of the resolved options (``is_deterministic``,
``is_adaptive``, ``nfe``); and its requirements on the SDE, checked once in ``solvers.sample``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE

Options = Mapping[str, Any]


# --- typed options ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """An option with its default and what is allowed: ``choices`` (a tuple, or a callable giving
    them, e.g. a registry's names), or a numeric range [low, high] (open ends with ``low_open`` /
    ``high_open``) for ``kind`` int or float; ``optional`` allows None."""

    default: Any
    kind: type = object
    choices: Union[tuple[Any, ...], Callable[[], Sequence[Any]], None] = None
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind is object and self.default is not None:
            object.__setattr__(self, "kind", type(self.default))

    def allowed(self) -> Sequence[Any] | None:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self) -> str:
        """What is allowed, in words: 'one of a, b', 'True or False', 'a number in (0, inf)'."""
        text = self._describe()
        return f"{text}, or None" if self.optional else text

    def _describe(self) -> str:
        allowed = self.allowed()
        if allowed is not None:
            return "one of " + ", ".join(str(v) for v in allowed)
        if self.kind is bool:
            return "True or False"
        noun = "an integer" if self.kind is int else "a number"
        if self.kind is int and math.isinf(self.high) and not self.low_open:
            return f"{noun} >= {self.low:g}"
        return f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        allowed = self.allowed()
        if allowed is not None:
            return any(value == v and type(value) is type(v) for v in allowed)
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if math.isnan(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def check(self, method: str, name: str, value: Any) -> Any:
        """``value`` (an int given for a float option becomes a float), or ``ValueError`` naming the
        option and what is allowed."""
        if not self.accepts(value):
            raise ValueError(f"bad value {value!r} for option {name} of method {method!r}; allowed: {self.describe()}")
        return float(value) if self.kind is float and value is not None else value


def flag(default: bool) -> Option:
    return Option(default, bool)


def choice(default: Any, choices: Union[tuple[Any, ...], Callable[[], Sequence[Any]]]) -> Option:
    return Option(default, type(default), choices)


def number(default: Optional[float], low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> Option:
    return Option(default, float, None, low, high, low_open, high_open, optional)


def integer(default: int, low: int = 1, high: float = math.inf) -> Option:
    return Option(default, int, None, low, high)


def positive(default: float) -> Option:
    """A finite number > 0."""
    return number(default, 0.0, math.inf, low_open=True, high_open=True)


def non_negative(default: float) -> Option:
    """A finite number >= 0."""
    return number(default, 0.0, math.inf, high_open=True)


# --- families --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """What the shared arguments mean for a kind of method."""

    name: str
    steps: str
    grid: str


FIXED_GRID = Family(
    "fixed grid",
    steps="the number of steps of the time grid",
    grid="t_start (default T) down to eps, uniform in the warped coordinate of `schedule`, or the explicit "
    "decreasing times given as schedule=",
)
DISCRETE_CHAIN = Family(
    "discrete chain",
    steps="the number of noise levels visited (a subset of the chain's levels)",
    grid="the chain's levels below t_start and above eps; a given t_start or eps becomes a level itself",
)
ADAPTIVE = Family(
    "adaptive",
    steps="not taken: the steps follow from rtol / atol",
    grid="from t_start (default T) to eps, step sizes chosen by the error control",
)
ODE_SOLVER = Family(
    "ODE solver",
    steps="the number of steps of a fixed-step torchdiffeq solver (not taken by adaptive ones)",
    grid="t_start (default T) down to eps; fixed-step solvers walk `schedule` (uniform in log-SNR by default)",
)


# --- requirements on the SDE -------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    """``holds(run, options)`` must be true (``run``: the ``solvers.common.Run``); the error says
    the method needs ``need`` and what it got, ``got(run)`` (default: the SDE)."""

    holds: Callable[[Any, Options], bool]
    need: str
    got: Callable[[Any], str] = lambda run: repr(run.sde)


#: Exponential integrators and λ-based grids: λ(eps) = log(α/σ) must be finite.
POSITIVE_EPS = Requirement(lambda run, options: run.eps > 0.0, "eps > 0 (λ = +inf at σ = 0; denoise=True reaches σ = 0)",
                           lambda run: f"eps = {run.eps}")


# --- the method spec -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepsOfSDE:
    """A default step count that depends on the SDE, e.g. its number of discretisation steps N."""

    text: str
    of: Callable[[LinearSDE, Options], int]

    def __repr__(self) -> str:
        return self.text


N_STEPS = StepsOfSDE("N", lambda sde, options: sde.N)

#: The shared arguments of ``solvers.sample`` a method may take.
ARGUMENTS = ("steps", "eps", "t_start", "schedule")


@dataclass(frozen=True)
class Method:
    """A registered sampling method.

    ``run(run, x, **options)`` draws the samples from x at t_start (``solvers.common.Run`` holds the
    SDE, the guarded score, the resolved steps / eps / t_start / grid and the per-step loop) and
    returns them, or ``(samples, info)`` with solver statistics. ``default_steps`` is an int, a
    ``StepsOfSDE`` or None (the method takes no steps). ``takes`` lists the shared arguments the
    method honours; any other given one is refused. ``deterministic(options)``, ``adaptive(options)``
    and ``nfe(steps, options)`` (None where the count is not known in advance) are functions of the
    resolved options; ``steps_taken(steps, options)`` is the number of solver steps (callbacks), which
    is ``steps`` unless the method groups grid intervals into longer steps.
    """

    name: str
    family: Family
    run: Callable[..., Any]
    options: dict[str, Option] = field(default_factory=dict)
    default_steps: Union[int, StepsOfSDE, None] = None
    takes: tuple[str, ...] = ARGUMENTS
    deterministic: Callable[[Options], bool] = lambda options: False
    adaptive: Callable[[Options], bool] = lambda options: False
    nfe: Callable[[int, Options], Optional[int]] = lambda steps, options: None
    steps_taken: Callable[[int, Options], int] = lambda steps, options: steps
    requires: tuple[Requirement, ...] = ()
    check: Callable[[Options], None] = lambda options: None
    description: str = ""

    def resolve(self, given: Options) -> dict[str, Any]:
        """The defaults overridden by ``given``, every value checked: an unknown name or a value
        outside what its option allows raises ``ValueError`` naming it and what is allowed."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; known: {known}")
        out = {name: opt.default for name, opt in self.options.items()}
        out.update({name: self.options[name].check(self.name, name, value) for name, value in given.items()})
        self.check(out)
        return out

    def is_deterministic(self, options: Options) -> bool:
        """Whether the samples are a function of x_T alone (no noise is drawn that changes them)."""
        return bool(self.deterministic(self.resolve(options)))

    def is_adaptive(self, options: Options) -> bool:
        """Whether the step sizes follow from a tolerance (rtol / atol) instead of ``steps``."""
        return bool(self.adaptive(self.resolve(options)))

    def steps_for(self, sde: LinearSDE, steps: Optional[int], options: Options) -> Optional[int]:
        """``steps``, or the method's default for ``sde`` and the resolved ``options``."""
        if steps is not None or self.default_steps is None:
            return steps
        if isinstance(self.default_steps, StepsOfSDE):
            return self.default_steps.of(sde, options)
        return self.default_steps

    def check_run(self, run: Any, options: Options) -> None:
        """Every requirement on the run (its SDE, eps, ...), checked once before sampling."""
        for requirement in self.requires:
            if not requirement.holds(run, options):
                raise ValueError(f"method {self.name!r} needs {requirement.need}; got {requirement.got(run)}")

    def describe(self) -> dict[str, Any]:
        """The entry of ``solvers.available()``."""
        return {
            "description": self.description,
            "family": self.family.name,
            "meaning": {"steps": self.family.steps, "grid": self.family.grid},
            "default_steps": repr(self.default_steps) if isinstance(self.default_steps, StepsOfSDE) else self.default_steps,
            "takes": self.takes,
            "options": {name: opt.default for name, opt in self.options.items()},
            "allowed": {name: opt.describe() for name, opt in self.options.items()},
            "deterministic": self.is_deterministic({}),
            "adaptive": self.is_adaptive({}),
        }


METHODS: Registry[Method] = Registry("sampling method")


def register_method(name: str, family: Family, **spec: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``run`` as the method ``name`` with its spec (the ``Method`` fields);
    the description shown by ``solvers.available()`` is the docstring's first line."""

    def add(run: Callable[..., Any]) -> Callable[..., Any]:
        doc = (run.__doc__ or "").strip().splitlines()
        METHODS.register(name)(Method(name, family, run, description=doc[0] if doc else "", **spec))
        return run

    return add
