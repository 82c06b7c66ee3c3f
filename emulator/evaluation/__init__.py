"""Zero-shot evaluation (ours, following lm-evaluation-harness): multiple-choice accuracy by log-likelihood
and perplexity (``scoring``), memoised on disk (``memo``), and the model-stealing probe (``probe``).
"""

from emulator.evaluation.memo import memoised_accuracy
from emulator.evaluation.probe import ProbeConfig, steal_
from emulator.evaluation.scoring import choice_logliks, multiple_choice_accuracy, perplexity

__all__ = [
    "ProbeConfig",
    "choice_logliks",
    "memoised_accuracy",
    "multiple_choice_accuracy",
    "perplexity",
    "steal_",
]
