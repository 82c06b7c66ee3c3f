"""Peak memory of a block of work, as clients report it."""

from __future__ import annotations

import numpy as np

from emulator.memory import PeakMemory, current_rss


def test_peak_memory_sees_a_transient_allocation_on_cpu():
    start = current_rss()
    with PeakMemory("cpu", interval=0.001) as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched, then freed inside the block
        del block
    assert memory.peak >= start + 60 * 2**20
