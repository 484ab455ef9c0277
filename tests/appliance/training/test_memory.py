"""Memory readouts and the light import of the training package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.gpu import NvmlReader
from appliance.training.events import Memory, parse_event
from appliance.training.memory import MemorySampler, process_peak_rss, process_rss, read_memory


def test_importing_the_light_modules_loads_no_deep_learning_stack() -> None:
    code = (
        "import sys\n"
        "import appliance.training, appliance.training.config, appliance.training.estimate\n"
        "import appliance.training.events, appliance.training.memory\n"
        "names = ('torch', 'transformers', 'peft', 'bitsandbytes')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_process_rss_is_plausible() -> None:
    rss = process_rss()
    assert rss is not None
    assert 10 * 2**20 < rss < 64 * 2**30


def test_peak_rss_is_this_process_own_not_its_parents() -> None:
    import subprocess
    import sys

    here = process_peak_rss()
    assert here is not None
    rss = process_rss()
    assert rss is not None
    assert here >= rss
    ballast = bytearray(200 * 1024 * 1024)  # raise this process's peak well above a child's
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from appliance.training.memory import process_peak_rss as p; print(p())"
    child = int(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert child < (process_peak_rss() or 0) - 150 * 1024 * 1024
    del ballast


def test_read_memory_without_cuda_reports_rss_and_round_trips() -> None:
    with NvmlReader() as nvml:
        state = nvml.read()
        event = read_memory("run-x", nvml=nvml, step=4)
    assert isinstance(event, Memory)
    assert event.step == 4
    assert event.rss is not None
    assert event.rss > 0
    # On a machine without a GPU the list is empty; with one, NVML fills used/total.
    assert len(event.gpus) == len(state.gpus)
    for gpu in event.gpus:
        assert gpu.total is not None
        assert gpu.used is not None
    assert parse_event(event.to_json()) == event


def test_sampler_emits_at_its_interval_until_stopped(tmp_path: Path) -> None:
    import threading

    from appliance.training.events import EventLog, replay

    path = tmp_path / "metrics.jsonl"
    steps = iter(range(1000))
    third = threading.Event()

    def step() -> int:
        index = next(steps)
        if index == 2:
            third.set()  # the third sample is being taken
        return index

    with EventLog(path) as log:
        with MemorySampler(log, "run-s", step=step, interval=0.05) as sampler:
            assert third.wait(timeout=60)
        # Stopped: the thread was joined, so no event can come after this count.
        assert not [t for t in threading.enumerate() if t.name == "memory-sampler"]
        count = sampler.samples
    events = [e for e in replay(path) if isinstance(e, Memory) and e.run_id == "run-s"]
    assert 3 <= len(events) == count
    assert [e.step for e in events] == list(range(len(events)))
