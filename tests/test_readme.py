"""The READMEs run as written.

Every ```bash line and ```python block of README.md, then deploy/README.md, runs in order, the way a
new user runs them after cloning: in a fresh folder holding copies of the repo's configs/ and deploy/
(cwd, so `configs/example.yaml` and `bash deploy/...` resolve; nothing is written into the repo),
shell lines through bash (comments stripped, backslash continuations joined), python blocks with
`sys.executable -c`. Each must exit 0. A command that cannot run as written is a README bug: fix the
README (or the config it uses), not this test. The only exceptions are the rules below.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = ("README.md", "deploy/README.md")  # run in this order, in one folder

# Training at full length takes hours on CPU; these make `pipeline train`/`pipeline calibrate` take
# ~10 s on 2 CPU cores (2 iterations of batch 1, validation on 3 small synthetic volumes).
TINY_TRAINING = [
    "iterations=2", "val_every=2", "workers=0", "batch_size=1",
    "synthetic.count=4", "synthetic.shape=[16,48,48]",
]

# A fine-tune (`init:`) of the demo's crops: 2 iterations, then validation and calibration on one crop (~30 s).
TINY_FINETUNE = ["iterations=2", "val_every=2", "calibrate=false"]

SKIP, SLURM, TINY, RUN = "skip", "needs SLURM", "tiny override appended", "runs as written"
TINY_FT = "tiny fine-tune override appended"

# fmt: off
# The rules: the first whose pattern matches a command (after comment stripping) applies; every
# other command runs exactly as written.
#   pattern                                              action  reason
RULES: tuple[tuple[str, str, str], ...] = (
    (r"^(python -m )?pip install\b",                       SKIP,   "installing is the user's step; the suite runs in the installed environment"),
    (r"^python -m pytest\b",                               SKIP,   "the test suite: this test is part of it (it would run itself)"),
    (r"deploy/local-slurm/(start|stop)\.sh",               SKIP,   "never run here: CI starts SLURM with start.sh before the suite, and stopping it would break the other SLURM tests"),
    (r"^napari\b",                                        SKIP,   "opens the viewer's window and waits for its user: tests/test_napari.py opens the same result headless"),
    (r"^pipeline job-script\b",                           RUN,    "prints a worker job script, submits nothing: runs without any batch scheduler"),
    (r"\bsbatch\b|deploy/local-slurm/|cluster\.kind=slurm|configs/slurm\.yaml",
                                                           SLURM,  "needs SLURM: runs only when `sbatch` is on PATH and PIPELINE_REQUIRE_SLURM=1 (CI), else skipped"),
    (r"^pipeline train \S*finetune\S*\.yaml",                TINY_FT, "a fine-tune takes 10 minutes on CPU: `--set` " + " ".join(TINY_FINETUNE)),
    (r"^pipeline (train|calibrate)\b",                     TINY,   "full training takes hours on CPU: `--set` " + " ".join(TINY_TRAINING)),
)
# fmt: on


@dataclass(frozen=True)
class Step:
    source: str  # README path and line, e.g. README.md:15
    lang: str  # bash | python
    code: str


def _strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` starting a word outside quotes)."""
    quote, prev = "", " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and (quote == "'" or line[i - 1] != "\\"):
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip()
        prev = ch
    return line.rstrip()


def extract_steps(readmes: tuple[str, ...] = READMES) -> list[Step]:
    """The ```bash commands (one step per command line) and ```python blocks (one step each), in order."""
    steps: list[Step] = []
    for name in readmes:
        lines = (REPO / name).read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^\s*```\s*(\w*)\s*$", lines[i])
            i += 1
            if not fence:
                continue
            lang, start = fence.group(1).lower(), i
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                i += 1
            body, i = lines[start:i], i + 1
            if lang == "python":
                steps.append(Step(f"{name}:{start + 1}", "python", "\n".join(body)))
            elif lang in ("bash", "sh", "shell", "console"):
                command, first = "", None
                for n, raw in enumerate(body, start + 1):
                    first = first or n
                    line = raw.rstrip()
                    if line.endswith("\\"):
                        command += line[:-1] + " "
                        continue
                    command = _strip_comment(command + line).strip()
                    if command:
                        steps.append(Step(f"{name}:{first}", "bash", command))
                    command, first = "", None
    return steps


def rule_for(step: Step) -> tuple[str, str, str] | None:
    for rule in RULES:
        if re.search(rule[0], step.code, flags=re.MULTILINE):
            return rule
    return None


STEPS = extract_steps()
_failed: list[str] = []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder like a fresh clone (configs/, deploy/); nothing outside it is read."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "repo"
    work.mkdir()
    for folder in ("configs", "deploy"):
        shutil.copytree(REPO / folder, work / folder)
    return work


def _env() -> dict[str, str]:
    """The user's shell after activating this environment; imports this checkout's `pipeline`."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _slurm_wanted() -> bool:
    required = os.environ.get("PIPELINE_REQUIRE_SLURM") == "1"
    if required and shutil.which("sbatch") is None:
        pytest.fail("PIPELINE_REQUIRE_SLURM=1 but no sbatch on PATH (start SLURM with deploy/local-slurm/start.sh)")
    return required


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS, ids=[f"{s.source} {s.code.split(chr(10))[0][:40]}" for s in STEPS])
def test_readme_command(step: Step, workspace: Path) -> None:
    rule = rule_for(step)
    code = step.code
    if rule is not None:
        _, action, reason = rule
        if action == SKIP:
            pytest.skip(f"{step.source} `{code}`: {reason}")
        if action == SLURM and not _slurm_wanted():
            pytest.skip(f"{step.source} `{code}`: {reason}")
        if action in (TINY, TINY_FT):
            code += "".join(f" --set {shlex.quote(x)}" for x in (TINY_TRAINING if action == TINY else TINY_FINETUNE))
    if _failed:
        pytest.skip(f"an earlier README command failed ({_failed[0]}); this one depends on it")
    if step.lang == "python":
        argv: str | list[str] = [sys.executable, "-c", code]
        shell = False
    else:
        argv, shell = code, True
    t0 = time.perf_counter()
    out = subprocess.run(argv, shell=shell, executable="/bin/bash" if shell else None, cwd=workspace, env=_env(),
                         capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        _failed.append(step.source)
    assert out.returncode == 0, (
        f"{step.source}: README command failed (exit code {out.returncode}, {seconds:.0f} s, cwd {workspace}):\n"
        f"{code}\n--- stderr (tail) ---\n{_tail(out.stderr)}\n--- stdout (tail) ---\n{_tail(out.stdout, 1000)}"
    )


def test_readme_extraction_finds_the_commands() -> None:
    """A README reformat must not make the test above silently run nothing."""
    bash = [s.code for s in STEPS if s.lang == "bash"]
    python = [s.code for s in STEPS if s.lang == "python"]
    for prefix in ("pipeline demo", "pipeline plan", "pipeline run", "pipeline predict", "pipeline evaluate",
                   "pipeline model init", "pipeline model info", "pipeline model export", "pipeline train",
                   "pipeline calibrate"):
        assert any(re.match(re.escape(prefix).replace(r"\ ", r"\s+") + r"\b", c) for c in bash), (
            f"no `{prefix}` command found in the ```bash blocks of {READMES}")
    assert any("sbatch" in c for c in bash), "no sbatch command found in deploy/README.md"
    assert any("pipeline.load_config(" in c and "pipeline.segment(" in c for c in python), (
        "the README's Python API block (load_config + segment) was not found")
    assert all(s.source.startswith(READMES) for s in STEPS)
    unconditional = [s for s in STEPS if rule_for(s) is None]
    assert len(unconditional) >= 8, [s.code for s in unconditional]
    for pattern, action, _ in RULES:  # every rule still applies to something: no stale exceptions
        assert any(re.search(pattern, s.code, flags=re.MULTILINE) for s in STEPS), (
            f"rule {pattern!r} ({action}) matches no README command; remove it or fix the README")
