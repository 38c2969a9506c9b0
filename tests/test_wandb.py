"""W&B the way its users work, checked offline by reading each run's .wandb file back."""
import json

import pytest

from tests.conftest import read_metrics, run_in_process
from tests.wandb_records import offline_run

FAST = ["steps=40", "eval_every=10", "logger=wandb"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tmp_path


def test_group_name_job_type_notes_and_tags_are_the_users_when_set(home):
    run_dir = home / "run"
    assert run_in_process([*FAST, "logger.group=ablation-3", "logger.name=adam-lr-sweep", "logger.job_type=probe",
                           "logger.notes=why this run exists", "logger.tags=[mine,v2]",
                           f"hydra.run.dir={run_dir}"]) == 0
    run = offline_run(run_dir)["run"]
    assert (run.run_group, run.display_name, run.job_type, run.notes) == (
        "ablation-3", "adam-lr-sweep", "probe", "why this run exists")
    assert {"mine", "v2", "adam", "reg:none"} <= set(run.tags)  # precond's tags stay, the user's are added


def test_precond_fills_in_what_the_user_left_unset(home):
    run_dir = home / "run"
    assert run_in_process([*FAST, "name=myexp", "lr=0.02", f"hydra.run.dir={run_dir}"]) == 0
    run = offline_run(run_dir)["run"]
    # name: the identifying overrides (logger and progress change no result, so they are left out)
    assert (run.run_group, run.display_name, run.job_type, run.notes) == (
        "myexp", "steps=40,eval_every=10,name=myexp,lr=0.02", "train", "")


def test_the_summary_holds_the_best_and_the_last_value_of_each_tracked_metric(home):
    run_dir = home / "run"
    assert run_in_process([*FAST, "model=mlp", "model.widths=[16]", "dataset=digits", "lr=0.01",
                           f"hydra.run.dir={run_dir}"]) == 0
    summary = offline_run(run_dir)["summary"]
    records = [r for r in read_metrics(run_dir) if r.get("val/loss") is not None]
    losses, accs = [r["val/loss"] for r in records], [r["val/acc"] for r in records]
    assert summary["val/loss"]["min"] == pytest.approx(min(losses))
    assert summary["val/loss"]["last"] == pytest.approx(losses[-1])
    assert summary["val/acc"]["max"] == pytest.approx(max(accs))
    assert min(losses) < losses[0] and max(accs) > accs[0]  # the best is not the first value
    assert summary["status"] == "completed"  # the rest of summary.json is still there


def test_the_final_model_is_an_artifact_unless_switched_off(home):
    on, off = home / "on", home / "off"
    assert run_in_process([*FAST, f"hydra.run.dir={on}"]) == 0
    assert run_in_process([*FAST, "logger.log_model=false", f"hydra.run.dir={off}"]) == 0
    artifacts = offline_run(on)["artifacts"]
    assert [a.type for a in artifacts] == ["model"]
    metadata = json.loads(artifacts[0].metadata)
    assert metadata["status"] == "completed" and metadata["steps"] == 40
    assert [entry.path for entry in artifacts[0].manifest.contents] == ["model.pt"]
    assert offline_run(off)["artifacts"] == []


@pytest.mark.parametrize("log_report", [True, False])
def test_a_sweep_logs_its_report_files_as_one_artifact_unless_switched_off(home, log_report):
    sweep = home / "sweep"
    assert run_in_process(["-m", *FAST, "lr=0.01,0.03", f"logger.log_report={str(log_report).lower()}",
                           "logger.log_model=false", f"hydra.sweep.dir={sweep}"]) == 0
    summary_run = offline_run(sweep)  # the sweep's own summary run; each job's run lives in its job dir
    assert summary_run["run"].job_type == "summary"
    reports = [a for a in summary_run["artifacts"] if a.type == "report"]
    if not log_report:
        assert reports == []
        return
    assert len(reports) == 1
    names = {entry.path for entry in reports[0].manifest.contents}
    assert {"comparison.md", "comparison.png"} <= names


def test_the_log_reader_rejoins_a_record_that_spans_several_blocks(home):
    """A 100 KB note is one record cut by W&B into first/middle/last pieces across 32 KiB blocks: the
    reader must give it back whole, and refuse a file that is not a W&B log."""
    import wandb

    from tests.wandb_records import BLOCK, raw_records, records

    note = "".join(f"{i:07d}," for i in range(12_500))  # 100,000 characters, every position distinct
    run_dir = home / "run"
    run = wandb.init(project="p", notes=note, dir=str(run_dir), mode="offline", reinit="create_new")
    run.finish()
    record = offline_run(run_dir)["run"]  # read once the log ends with its exit record
    kinds = [kind for kind, _ in records(next(run_dir.glob("wandb/offline-run-*/*.wandb")))]
    assert record is not None, f"no run record in the log; record kinds: {kinds}"
    assert len(note) > 3 * BLOCK and record.notes == note
    not_a_log = home / "x.wandb"
    not_a_log.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(raw_records(not_a_log))


def test_the_log_reader_skips_a_zero_trailer_of_exactly_one_header_and_reads_on(tmp_path):
    """A block whose last 7 bytes are zero padding (the record after it starts the next block) must not end
    the reading: records after it are still there (the case that made a run record go missing)."""
    import struct

    from tests.wandb_records import BLOCK, FULL, HEADER, raw_records

    first = b"a" * (BLOCK - 3 * HEADER)  # file header + record header + this leaves exactly 7 bytes
    second = b"second record"
    data = b":W&B" + b"\x00" * 3 + struct.pack("<IHB", 0, len(first), FULL) + first
    data += b"\x00" * HEADER  # the zero trailer
    assert len(data) == BLOCK
    data += struct.pack("<IHB", 0, len(second), FULL) + second
    path = tmp_path / "run.wandb"
    path.write_bytes(data)
    assert list(raw_records(path)) == [first, second]
