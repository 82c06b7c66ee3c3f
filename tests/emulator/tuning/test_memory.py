"""Peak memory of a block of work, as clients report it."""

from __future__ import annotations

import mmap
import time

import numpy as np

from emulator.tuning.memory import PeakMemory, current_rss

PAGE = mmap.PAGESIZE


def resident(size: int) -> mmap.mmap:
    """``size`` bytes of fresh anonymous memory, every page touched: RSS grows by ``size`` whatever the
    allocator already holds (a NumPy array can reuse pages a long test session freed but kept resident)."""
    memory = mmap.mmap(-1, size)
    for offset in range(0, size, PAGE):
        memory[offset] = 1
    return memory


def test_peak_memory_sees_a_transient_allocation_on_cpu():
    start = current_rss()
    with PeakMemory("cpu", interval=0.001) as memory:
        resident(64 * 2**20).close()  # 64 MiB, touched, then unmapped inside the block
    assert memory.peak >= start + 60 * 2**20


def test_a_peak_from_before_the_block_is_not_reported():
    resident(256 * 2**20).close()  # the process's high-water mark rises by 256 MiB, then RSS falls back
    start = current_rss()
    with PeakMemory("cpu") as memory:
        small = np.ones(2**20 // 8)
        del small
    assert memory.peak < start + 128 * 2**20


def test_without_the_kernels_reset_the_sampler_sees_a_held_allocation(monkeypatch):
    from emulator.tuning import memory as memory_module

    monkeypatch.setattr(memory_module, "_reset_peak_rss", lambda: False)  # as on macOS, or where refused
    start = current_rss()
    with PeakMemory("cpu", interval=0.001) as memory:
        block = resident(64 * 2**20)
        time.sleep(0.05)  # held long enough for a sample (the GIL is free while sleeping)
        block.close()
    assert memory.peak >= start + 60 * 2**20
