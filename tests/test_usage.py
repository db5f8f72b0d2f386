"""Measuring what work costs: time, CPU and memory, including in freshly started processes."""
import mmap
import subprocess
import sys
import time

import numpy as np

from unmask.usage import measure_usage


def test_measure_usage_sees_time_cpu_and_memory():
    with measure_usage() as usage:
        # 100 MB of fresh pages, touched. An anonymous map, not np.ones: malloc may hand back memory
        # that earlier tests freed but that is still resident, and then RSS does not move.
        block = mmap.mmap(-1, 100 * 2**20)
        np.frombuffer(block, np.uint8)[:] = 1
        time.sleep(0.1)  # the sampler thread gets the GIL at least once while the block lives
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
        block.close()
    assert usage.wall_s >= 0.2 and usage.cpu_s >= 0.2
    assert usage.peak_rss_mb - usage.start_rss_mb >= 80
    assert usage.lifetime_peak_rss_mb >= usage.peak_rss_mb * 0.9
    assert set(usage.as_dict()) >= {"wall_s", "cpu_s", "peak_rss_mb", "cores"}


def test_a_new_process_reports_its_own_peak_not_its_parents():
    parent = np.ones(400 * 2**20 // 8)  # this process holds 400 MB more while the child starts
    child = subprocess.run([sys.executable, "-c", "from unmask.usage import lifetime_peak_rss_mb; "
                            "print(lifetime_peak_rss_mb())"], capture_output=True, text=True, check=True)
    assert parent.sum() > 0
    # Linux's ru_maxrss would say over 400 MB here: it carries the parent's peak into the child.
    assert float(child.stdout) < 100
