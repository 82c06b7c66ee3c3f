"""Peak memory of a block of work, as clients report it."""

from __future__ import annotations

import time

import numpy as np

from emulator.memory import PeakMemory, current_rss


def test_peak_memory_sees_a_transient_allocation_on_cpu():
    start = current_rss()
    with PeakMemory("cpu", interval=0.001) as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched, then freed inside the block
        del block
    assert memory.peak >= start + 60 * 2**20


def test_a_peak_from_before_the_block_is_not_reported():
    earlier = np.ones(256 * 2**20 // 8)  # the process's high-water mark rises by 256 MiB, then falls back
    del earlier
    start = current_rss()
    with PeakMemory("cpu") as memory:
        small = np.ones(2**20 // 8)
        del small
    assert memory.peak < start + 128 * 2**20


def test_without_the_kernels_reset_the_sampler_sees_a_held_allocation(monkeypatch):
    from emulator import memory as memory_module

    monkeypatch.setattr(memory_module, "_reset_peak_rss", lambda: False)  # as on macOS, or where refused
    start = current_rss()
    with PeakMemory("cpu", interval=0.001) as memory:
        block = np.ones(64 * 2**20 // 8)
        time.sleep(0.05)  # held long enough for a sample (the GIL is free while sleeping)
        del block
    assert memory.peak >= start + 60 * 2**20
