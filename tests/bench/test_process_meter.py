"""``ProcessMeter``'s wait for a core: what sharing the machine costs a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from seatd.bench.stack import ProcessMeter, run_queue_wait

pytestmark = pytest.mark.skipif(
    not os.path.exists(f"/proc/{os.getpid()}/schedstat") or not hasattr(os, "sched_setaffinity"),
    reason="the kernel gives no run-queue times here (Linux only)",
)

_SPIN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


def _metered(pid: int) -> ProcessMeter:
    """A second of the process, after a moment to settle."""
    time.sleep(0.2)
    meter = ProcessMeter(pid)
    meter.start()
    time.sleep(1.0)
    meter.stop()
    return meter


def test_a_process_sharing_one_core_with_two_others_mostly_waits_for_it() -> None:
    """Three busy processes on one core: each runs about a third of the time and waits for
    the core the rest; alone on it, one barely waits."""
    core = {min(os.sched_getaffinity(0))}
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(3)]
    try:
        for spinner in spinners:
            os.sched_setaffinity(spinner.pid, core)
        crowded = _metered(spinners[0].pid)
        assert crowded.wait_percent is not None
        assert crowded.wait_percent > 40, (crowded.cpu_percent, crowded.wait_percent)
        assert crowded.cpu_percent < 60
        for spinner in spinners[1:]:
            spinner.kill()
            spinner.wait()
        alone = _metered(spinners[0].pid)
        assert alone.wait_percent is not None
        assert alone.wait_percent < crowded.wait_percent / 2, (alone.wait_percent,)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_no_figure_for_a_process_that_is_gone() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert run_queue_wait(gone.pid) is None
