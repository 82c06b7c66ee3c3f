"""The compared methods: a kind (an emulator method of ``emulator.methods.METHODS``) plus an emulator setting.

Shared by ``compare`` (which plans and runs them), ``compare_report`` and ``compare_tasks`` (which label and
pair their rows). What a kind is and does (its preset, its role in a comparison) is the registry's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emulator.config import EmulatorConfig
from emulator.methods import METHODS, MethodSpec

Setting = Mapping[str, Any]  # emulator-section values of one method, e.g. {"alpha": 0.25, "rank_keep": 0.8}


@dataclass(frozen=True)
class Method:
    """One compared method: its kind and the emulator values it sets on top of the kind's defaults."""

    kind: str  # a key of emulator.methods.METHODS
    setting: tuple[tuple[str, Any], ...] = ()  # (emulator field, value), sorted

    @classmethod
    def of(cls, kind: str, setting: Setting = ()) -> Method:
        values = dict(setting)
        return cls(kind, tuple(sorted((k.replace("-", "_"), v) for k, v in values.items())))

    @property
    def traits(self) -> MethodSpec:
        """The kind's entry in the method registry."""
        return METHODS[self.kind]

    def emulator(self, base: EmulatorConfig) -> EmulatorConfig:
        """The base run's emulator section with this method's kind and setting applied (validated)."""
        return EmulatorConfig.from_dict({**base.to_dict(), **self.traits.preset, **dict(self.setting)})

    def label(self, base: EmulatorConfig) -> str:
        """For tables and plots: ``scaleot α=0.25 β=0.8``, ``uniform α=0.5``, ``full``."""
        return " ".join([self.kind, *(f"{k}={_text(v)}" for k, v in self._shown(base))])

    def slug(self, base: EmulatorConfig) -> str:
        """Run-directory name: ``scaleot-a0.25-b0.8``, ``uniform-distill-a0.25``, ``full``."""
        parts = [
            self.kind.replace("+", "-"),
            *(f"{_ASCII.get(k, k)}{_text(v)}" for k, v in self._shown(base)),
        ]
        return "-".join(parts)

    def _shown(self, base: EmulatorConfig) -> list[tuple[str, Any]]:
        if not self.traits.compresses:
            return []
        config = self.emulator(base)
        shown = [("α", config.alpha)]
        if self.traits.src_in_method or config.src.rank_keep < 1:
            shown.append(("β", config.src.rank_keep))
        return shown + [(k, v) for k, v in self.setting if k not in ("alpha", "rank_keep")]


_ASCII = {"α": "a", "β": "b"}


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


# The order a comparison runs and lists its methods in: the upper bound, the baselines (the reference first,
# then the rest), the method under study last; within a role, the registry's order.
_ROLE_ORDER = {"upper-bound": 0, "reference": 1, "baseline": 2, "proposed": 3}


def compared_kinds() -> list[str]:
    """Every method of the registry, in comparison order: ``full``, ``uniform``, ..., ``scaleot``."""
    return sorted(METHODS, key=lambda kind: _ROLE_ORDER[METHODS[kind].role])


def settings_field(kind: str) -> str:
    """The ``[compare]`` list holding a kind's settings: ``uniform+distill`` -> ``uniform_distill``."""
    return kind.replace("+", "_").replace("-", "_")


def is_upper_bound(kind: str) -> bool:
    """The kind is the comparison's utility upper bound (``full``): every plug-in is paired against it, and it
    runs once, at no setting."""
    return kind in METHODS and METHODS[kind].role == "upper-bound"  # "zero-shot" rows are no method


def pairs_with_reference(kind: str) -> bool:
    """The kind's plug-in is paired against the reference baseline's (uniform LayerDrop) at the same α: every
    emulator but the reference itself and the upper bound."""
    return kind in METHODS and METHODS[kind].role not in ("upper-bound", "reference")


def is_reference(kind: str) -> bool:
    """The kind is the reference baseline every other emulator is paired against at the same α."""
    return kind in METHODS and METHODS[kind].role == "reference"
