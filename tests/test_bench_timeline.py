"""scripts/bench_sweep.py's timeline: where a packed sweep's wall time went, read from its own log."""
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import load_script

LOG = """[2026-12-05 10:00:01,000][HYDRA] Launching 48 jobs: 1 pack(s), 0 alone
[2026-12-05 10:00:01,500][HYDRA] training 48 jobs as one pack
[2026-12-05 10:00:04,500][HYDRA] {first_end}
[2026-12-05 10:00:04,600][HYDRA] {second_end}
"""


@pytest.mark.parametrize("first_end, second_end", [
    ("[job 0] status=completed val/loss=0.1", "[job 1] status=diverged"),   # a plain sweep's named end lines
    ("status=completed val/loss=0.1", "status=completed val/loss=0.2"),       # a job without a label
    ("tuning done: 48 runs: 48 completed; 40 reached the target", "arm a: chosen"),  # a tuned sweep's batch line
])
def test_the_timeline_puts_training_before_the_first_result_line_and_the_rest_after(first_end, second_end):
    bench = load_script("bench_sweep")
    start = datetime(2026, 12, 5, 10, 0, 0).timestamp()
    sweep = Path("/nowhere")
    bench.LOGS[sweep] = (start, start + 5.0, LOG.format(first_end=first_end, second_end=second_end))
    phases = dict(bench.timeline(sweep))
    assert phases["training the pack (steps, evaluations, monitors, final files)"] == pytest.approx(3.0)
    assert phases["report(s) and exit"] == pytest.approx(0.5)
    assert phases["start-up, composing and checking the batch"] == pytest.approx(1.0)


def test_in_a_tuned_batch_of_two_packs_the_second_packs_line_ends_the_first_packs_training():
    """A tuned batch logs no per-job result lines: pack 1's training lasts until pack 2's line, pack 2's until
    the batch line."""
    bench = load_script("bench_sweep")
    log = """[2026-12-05 10:00:01,000][HYDRA] Launching 60 jobs: 2 pack(s), 0 alone
[2026-12-05 10:00:01,200][HYDRA] training 30 jobs as one pack
[2026-12-05 10:00:06,200][HYDRA] training 30 jobs as one pack
[2026-12-05 10:00:10,200][HYDRA] confirmation look 1 done: 60 runs: 60 completed
"""
    start = datetime(2026, 12, 5, 10, 0, 0).timestamp()
    sweep = Path("/nowhere-tuned")
    bench.LOGS[sweep] = (start, start + 11.0, log)
    phases = bench.timeline(sweep)
    assert [round(s, 3) for _, s in phases] == [1.0, 0.2, 5.0, 4.0, 0.8]
    assert phases[2][0].startswith("training the pack") and phases[3][0].startswith("training the pack")
    assert phases[1][0] == "placing the jobs, building the members"
