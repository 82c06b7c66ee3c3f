"""The emulator methods, one entry each: what a method does is read from its traits here, never from its name.

A method is ScaleOT (Yao et al., AAAI 2025) or one of the baselines it is compared with (the papers'
Baselines). Each entry says, once, which middle blocks the method takes out of the emulator (``removes``),
what takes their place (``fills``), whether the kept middle is distilled, whether SRC is part of it and what
role it plays in a comparison. Everything else is derived from those traits and read by the code that needs
it: the sections of ``EmulatorConfig`` a build reads (and the bundle cache keys on), whether it needs the
public corpus (and the position-limit check of ``seq_len``), the config combinations it allows, the preset a
comparison applies, the stage-1 bundle it is derived from. Adding a method is one entry here plus its
algorithm in ``emulator.scaleot.assembly``; ``tests/emulator/test_methods.py`` checks every entry against what
assembly does.

Torch-free: ``emulator.config`` validates against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Which middle blocks leave the emulator: none (the full model), those uniform LayerDrop drops
# (``round(α·M)``, spread as Offsite-Tuning's ``uniform_choose_layers`` keeps the rest), or the lowest stage-1
# importance scores per replacement group (ScaleOT's Dynamic LayerReplace, stage 1).
Removes = Literal["nothing", "uniform", "lowest-scores"]
# What takes a removed block's place: nothing (dropped), a trained harmonizer (ScaleOT), or a copy of its
# nearest kept middle block (CRaSh's layer sharing, emulator.scaleot.layer_sharing).
Fills = Literal["nothing", "harmonizer", "copy"]
# The method's part in a comparison (simulations.studies): the utility upper bound (no compression), the
# reference baseline every other emulator is paired against at the same α, another baseline, or the
# method under study.
Role = Literal["upper-bound", "reference", "baseline", "proposed"]


@dataclass(frozen=True)
class MethodSpec:
    """One emulator method's traits.

    Attributes:
        name: the ``emulator.method`` value.
        summary: one line, for help texts and tables.
        removes: which middle blocks leave the emulator (``Removes``).
        fills: what takes a removed block's place (``Fills``).
        distills: the kept middle blocks are distilled on the public corpus (Offsite-Tuning's baseline).
        src_in_method: (paper) SRC is part of the method, so its preset leaves β to the caller and a
            comparison's label shows β; the baselines pin SRC off (rank_keep 1) unless a setting asks.
        derived_from: the method whose stage-1 bundle (SRC off) this one's is derived from rather than built
            again (``emulator.scaleot.assembly.stage1_twin``); None: built on its own.
        role: the method's part in a comparison (``Role``).
    """

    name: str
    summary: str
    removes: Removes
    fills: Fills
    role: Role
    distills: bool = False
    src_in_method: bool = False
    derived_from: str | None = None

    @property
    def compresses(self) -> bool:
        """The emulator differs from the full model: α and SRC apply (``full``: alpha 0, rank_keep 1)."""
        return self.removes != "nothing"

    @property
    def stage1(self) -> bool:
        """Runs ScaleOT's stage 1 (harmonizers and importance scores) when α > 0."""
        return self.removes == "lowest-scores"

    @property
    def harmonizers(self) -> bool:
        """Removed blocks are replaced by harmonizers (``selection``, ``share_replaced`` and the harmonizer
        settings apply)."""
        return self.fills == "harmonizer"

    @property
    def shares(self) -> bool:
        """Removed blocks are filled by a copy of their nearest kept middle block (needs one kept)."""
        return self.fills == "copy"

    @property
    def reads_corpus(self) -> bool:
        """Trains on the public corpus (stage 1 or distillation): its text keys the bundle and its blocks of
        ``seq_len`` tokens must fit the model's positions."""
        return self.stage1 or self.distills

    @property
    def sections(self) -> tuple[str, ...]:
        """The ``EmulatorConfig`` sections a build reads besides the top level; ``src`` only while SRC is on
        (``EmulatorConfig.sections_used``). The bundle cache keys an emulator on exactly these."""
        used = {
            "data": self.reads_corpus,
            "stage1": self.stage1,
            "distill": self.distills,
            "src": self.compresses,
        }
        return tuple(name for name, on in used.items() if on)

    @property
    def steps_field(self) -> str | None:
        """The config field counting the build's training steps (None: the build trains nothing)."""
        return "stage1_steps" if self.stage1 else "distill_steps" if self.distills else None

    @property
    def preset(self) -> dict[str, Any]:
        """What the method sets in the emulator section before a caller's own values (which win)."""
        values: dict[str, Any] = {"method": self.name}
        if not self.compresses:
            values["alpha"] = 0.0
        if not self.src_in_method:
            values["rank_keep"] = 1.0
        return values


def _table(*specs: MethodSpec) -> dict[str, MethodSpec]:
    return {spec.name: spec for spec in specs}


# The one table of methods. The order is the one error messages and ``--method`` list them in.
METHODS: Mapping[str, MethodSpec] = _table(
    MethodSpec(
        "scaleot",
        "ScaleOT: the lowest-scored middle blocks replaced by harmonizers, SRC on the kept ones",
        removes="lowest-scores",
        fills="harmonizer",
        role="proposed",
        src_in_method=True,
        derived_from="scaleot",
    ),
    MethodSpec(
        "uniform",
        "Offsite-Tuning's uniform LayerDrop",
        removes="uniform",
        fills="nothing",
        role="reference",
    ),
    MethodSpec(
        "uniform+distill",
        "uniform LayerDrop, the kept middle distilled on the public corpus (Offsite-Tuning)",
        removes="uniform",
        fills="nothing",
        role="baseline",
        distills=True,
    ),
    MethodSpec(
        "full",
        "no compression: the clients fine-tune the adapter blocks on the full model",
        removes="nothing",
        fills="nothing",
        role="upper-bound",
    ),
    MethodSpec(
        "importance-drop",
        "ScaleOT's stage-1 ranking, the blocks it would replace dropped (no harmonizers)",
        removes="lowest-scores",
        fills="nothing",
        role="baseline",
        derived_from="scaleot",
    ),
    MethodSpec(
        # CRaSh (Zhang et al., EMNLP 2023): sharing, no SRC.
        "crash",
        "CRaSh: uniform LayerDrop's removed blocks filled by copies of their nearest kept block",
        removes="uniform",
        fills="copy",
        role="baseline",
    ),
)


def method_spec(name: str) -> MethodSpec:
    """The entry of method ``name``.

    Raises:
        ValueError: ``name`` is no method; the message lists the methods.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(
            f"emulator.method={name!r} is not allowed; use one of {', '.join(map(repr, METHODS))}"
        )
    return METHODS[name]


def methods_with(**traits: Any) -> list[str]:
    """The names of the methods whose traits (attributes or properties) have the given values, in table order:
    ``methods_with(stage1=True)`` -> ``["scaleot", "importance-drop"]``."""
    return [n for n, spec in METHODS.items() if all(getattr(spec, k) == v for k, v in traits.items())]
