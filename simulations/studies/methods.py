"""The compared methods: a kind (a preset of ``emulator.config.METHOD_PRESETS``) plus an emulator setting.

Shared by ``compare`` (which plans and runs them) and ``compare_report`` (which labels their rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emulator.config import METHOD_PRESETS, EmulatorConfig

Setting = Mapping[str, Any]  # emulator-section values of one method, e.g. {"alpha": 0.25, "rank_keep": 0.8}


@dataclass(frozen=True)
class Method:
    """One compared method: its kind and the emulator values it sets on top of the kind's defaults."""

    kind: str  # a key of METHOD_PRESETS
    setting: tuple[tuple[str, Any], ...] = ()  # (emulator field, value), sorted

    @classmethod
    def of(cls, kind: str, setting: Setting = ()) -> Method:
        values = dict(setting)
        return cls(kind, tuple(sorted((k.replace("-", "_"), v) for k, v in values.items())))

    def emulator(self, base: EmulatorConfig) -> EmulatorConfig:
        """The base run's emulator section with this method's kind and setting applied (validated)."""
        return EmulatorConfig.from_dict({**base.to_dict(), **METHOD_PRESETS[self.kind], **dict(self.setting)})

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
        if self.kind == "full":
            return []
        config = self.emulator(base)
        shown = [("α", config.alpha)]
        if self.kind == "scaleot" or config.src.rank_keep < 1:
            shown.append(("β", config.src.rank_keep))
        return shown + [(k, v) for k, v in self.setting if k not in ("alpha", "rank_keep")]


_ASCII = {"α": "a", "β": "b"}


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
