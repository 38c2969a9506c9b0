"""Every command in the README and the docs pages runs as written and exits 0: the cheap ones here, the longer ones
under the slow marker; the rest need what a test machine lacks, and each says what."""
import re
import shlex

import pytest

from tests.conftest import ROOT, run_in_process

#: a README command containing one of these is not run by the tests, for the reason given
NOT_RUN_HERE = {
    "device=cuda": "needs a GPU",
    "hydra/launcher=slurm": "needs a SLURM cluster",
    "download=true": "needs a network",
    "<": "a placeholder for the reader's own sweep dir",
    "...": "a placeholder",
    "steps=100000": "the interrupt-and-resume demonstration, stopped by hand",
    "experiment=": "a tuned experiment: make run and make results run them",
    "preconditioner=adamax": "needs the example extension installed: tests/test_extending.py installs it and runs it",
}
#: commands that take more than a few seconds on 2 CPU cores (make test-slow runs them)
SLOW = ("hydra/launcher=local_parallel", "normalization_arm=", "preconditioner=sgd,adagrad,rmsprop,adam")


def readme_commands() -> list[str]:
    """``precond-train``/``precond-report`` command lines of the README's bash blocks (continuations joined,
    comments dropped)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "".join(page.read_text(encoding="utf-8") for page in pages)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith(("precond-train", "precond-report")):
                commands.append(re.split(r"\s+#\s", line)[0].strip())
    return commands


def reason_not_run(command: str):
    return next((why for pattern, why in NOT_RUN_HERE.items() if pattern in command), None)


COMMANDS = readme_commands()
RUN = [c for c in COMMANDS if reason_not_run(c) is None]


def test_the_readme_has_commands_and_every_one_is_run_or_says_why_not():
    assert len(COMMANDS) >= 20 and all(c.startswith("precond-") for c in COMMANDS)
    assert len(RUN) >= 10
    assert {reason_not_run(c) for c in COMMANDS if c not in RUN} <= set(NOT_RUN_HERE.values())


def _run(command: str, tmp_path, monkeypatch) -> int:
    monkeypatch.chdir(tmp_path)  # relative dirs of a command (hydra.run.dir=outputs/...) land here
    monkeypatch.setenv("HOME", str(tmp_path))  # W&B: no account, offline files only
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("PRECOND_OUTPUT_ROOT", str(tmp_path / "outputs"))
    assert command.startswith("precond-train")
    return run_in_process(shlex.split(command)[1:])


@pytest.mark.parametrize("command", [c for c in RUN if not any(s in c for s in SLOW)])
def test_a_cheap_readme_command_exits_0(command, tmp_path, monkeypatch):
    assert _run(command, tmp_path, monkeypatch) == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in RUN if any(s in c for s in SLOW)])
def test_a_longer_readme_command_exits_0(command, tmp_path, monkeypatch):
    assert _run(command, tmp_path, monkeypatch) == 0
