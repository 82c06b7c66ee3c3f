"""Tasks and text (ours): the task registry (the ScaleOT and Offsite-Tuning papers' tasks from the offline
wheel or the hub, BIG-bench, a synthetic task), their encoding for training and scoring
(``emulator.data.encoding``) and the public corpus of stage 1 (``emulator.data.corpus``).

This package and its task modules are torch-free (the server and the tests read tasks before any model
loads); ``encoding`` and ``corpus`` build tensors, so they are imported from their modules, not from here.
"""

from emulator.data.examples import MCExample, TaskSplits
from emulator.data.paper_tasks import PAPER_TASKS
from emulator.data.tasks import load_task, task_names

__all__ = ["MCExample", "PAPER_TASKS", "TaskSplits", "load_task", "task_names"]
