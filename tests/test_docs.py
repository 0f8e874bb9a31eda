"""The README and docs/ agree with the code: every flag and LLAVA_* variable their shell snippets
show exists in that script, every relative link and #anchor resolves, the README stays a
ten-minute read; and (slow) the README's compare and evaluate commands run as written.

The demo's snippet is run by tests/test_demo.py, the Slurm commands by tests/test_slurm.py and
tests/test_submit_numbers.py; the setup, download and squeue lines need a cluster or the network.
Commands the tools' messages print are run as printed here and there (docs/testing.md, "Printed commands").
"""
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

# Our scripts that take flags, checked against their --help; submit_llava.sh takes none (sbatch's
# flags stand before it). The benchmark's --help imports torch (seconds): its source is read instead.
FLAG_SCRIPTS = ["llava_split_worker.py", "merge_results_llava.py", "compare_counts.py",
                "evaluate_soccernet.py", "status_llava.py", "benchmarks/bench_worker.py"]
HELP_SCRIPTS = FLAG_SCRIPTS[:5]
# Where LLAVA_* variables are read: the shell scripts, the Python scripts and the package.
ENV_SOURCES = ["*.sh", "tools/*.sh", "tests/run.sh", "*.py", "llava_soccer/**/*.py"]

FENCE = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ENV = re.compile(r"\bLLAVA_[A-Z0-9_]+\b")
ENV_NAMED = re.compile(r"\bLLAVA_[A-Z0-9_*]*[A-Z0-9_]")  # also LLAVA_LOCK_*_S: every such variable
SEPARATORS = {"|", "||", "&&", ";", "&"}


def rel(path):
    return path.relative_to(ROOT).as_posix()


def bash_blocks(path):
    """The fenced ```bash blocks of a markdown file, dedented (blocks inside list items included)."""
    blocks = []
    for m in FENCE.finditer(path.read_text()):
        if m.group(2) == "bash":
            indent = len(m.group(1))
            blocks.append("\n".join(line[indent:] for line in m.group(3).splitlines()))
    return blocks


def without_code(text):
    """Markdown text without fenced blocks and code spans: what links and headings are made of."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def commands(path):
    """Every command shown in a file: each line of its bash blocks, and each code span that runs one
    of our scripts; as token lists split at pipes and separators, comments dropped."""
    lines = [line for block in bash_blocks(path) for line in block.splitlines()]
    lines += [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub("", path.read_text()))
              if any(Path(script).name in m.group(2) for script in FLAG_SCRIPTS)]
    result = []
    for line in lines:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:  # an unbalanced quote in a shown command is a bug of its own
            raise AssertionError(f"{rel(path)}: cannot split {line!r}: {e}") from None
        command = []
        for token in [*tokens, ";"]:
            if token in SEPARATORS:
                if command:
                    result.append((line, command))
                command = []
            else:
                command.append(token)
    return result


@functools.cache
def help_text(script):
    r = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{script} --help failed: {r.stderr}"
    return r.stdout


def flags_of(script):
    """The flags a script accepts: every --name its --help shows (or its source holds)."""
    text = help_text(script) if script in HELP_SCRIPTS else (ROOT / script).read_text()
    return set(re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", text))


@functools.cache
def known_env():
    names = set(ENV.findall(help_text("llava_split_worker.py")))
    for pattern in ENV_SOURCES:
        for path in ROOT.glob(pattern):
            parts = path.relative_to(ROOT).parts  # (a checkout under a folder named tests counts too)
            if ".venv" not in parts and ("tests" not in parts or path.name == "run.sh"):
                names |= set(ENV.findall(path.read_text(errors="replace")))
    return names


def shown_flags(script):
    """{flag: [where]} for every --flag shown after `script` in the README's and docs' commands."""
    shown = {}
    for path in DOCS:
        for line, tokens in commands(path):
            at = [i for i, t in enumerate(tokens) if t == script or Path(t).name == Path(script).name]
            for token in tokens[at[0] + 1:] if at else []:
                if token.startswith("--"):
                    shown.setdefault(token.split("=", 1)[0], []).append(f"{rel(path)}: {line.strip()}")
    return shown


def table_flags():
    """{flag: where} for every flag in a table column headed `flag` (the worker's settings)."""
    shown = {}
    for path in DOCS:
        column = None
        for line in path.read_text().splitlines():
            if not line.startswith("|"):
                column = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if column is None:
                column = cells.index("flag") if "flag" in cells else -1
            elif column >= 0 and len(cells) > column:
                for flag in re.findall(r"`(--[\w-]+)", cells[column]):
                    shown[flag] = f"{rel(path)}: {line[:80]}"
    return shown


def test_the_docs_show_bash_snippets():
    """The extraction itself: the README's commands are found (a broken fence would hide them all)."""
    shown = [tokens for _, tokens in commands(README)]
    assert ["sbatch", "submit_llava.sh", "0", "39"] in shown
    assert any(t[:2] == ["python", "compare_counts.py"] for t in shown)
    assert any(t[:2] == ["python", "evaluate_soccernet.py"] for t in shown)
    assert all(bash_blocks(path) for path in DOCS if path.name in ("README.md", "gpus.md", "design.md"))


@pytest.mark.parametrize("script", FLAG_SCRIPTS)
def test_every_flag_shown_exists(script):
    if not (ROOT / script).is_file():
        pytest.skip(f"{script} is not on this branch yet: the flags the docs show for it are checked once it lands")
    shown = shown_flags(script)
    unknown = {flag: where for flag, where in shown.items() if flag not in flags_of(script)}
    assert not unknown, f"flags the docs show that {script} --help does not know: {unknown}"
    if script != "status_llava.py":
        assert shown, f"the docs show no command of {script}: is the extraction broken?"


def test_submit_takes_no_flags_of_its_own():
    for path in DOCS:
        for line, tokens in commands(path):
            if "submit_llava.sh" in tokens:
                after = tokens[tokens.index("submit_llava.sh") + 1:]
                after = after[1:] if after[:1] == ["--check"] else after  # its one flag: check, run nothing
                assert not [t for t in after if t.startswith("-")], f"{rel(path)}: {line}"
                assert all(t.isdigit() for t in after), f"{rel(path)}: START/END must be digits: {line}"


def test_every_flag_in_the_settings_tables_exists():
    shown = table_flags()
    assert {"--model", "--quantization", "--prefill-chunk", "--print-plan"} <= set(shown)
    unknown = {flag: where for flag, where in shown.items() if flag not in flags_of("llava_split_worker.py")}
    assert not unknown, f"flags in the settings tables that llava_split_worker.py does not know: {unknown}"


def test_every_llava_variable_named_exists():
    """Every LLAVA_* the README and docs name, in snippets, tables or prose, is read by some script."""
    named = {}
    for path in DOCS:
        for name in ENV_NAMED.findall(path.read_text()):
            named.setdefault(name, rel(path))
    assert {"LLAVA_NUM_WORKERS", "LLAVA_REPLACE_MISMATCHED", "LLAVA_LOCK_STALE_S"} <= set(named)
    unknown = {name: where for name, where in named.items() if not fnmatch.filter(known_env(), name)}
    assert not unknown, f"variables the docs name that no script reads: {unknown}"


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, result = {}, set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6} +(.+?) *#*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def test_every_relative_link_resolves():
    broken, checked = [], 0
    for path in DOCS:
        for target in LINK.findall(without_code(path.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            checked += 1
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{rel(path)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{rel(path)}: {target} (no heading #{anchor} in {dest.name})")
    assert checked > 20
    assert not broken, "\n".join(broken)


def test_every_doc_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(without_code(README.read_text()))}
    assert not [rel(p) for p in DOCS[1:] if p.resolve() not in linked]


def test_the_readme_is_a_ten_minute_read():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move details to docs/"


def test_where_a_run_stands_is_under_monitoring():
    text = README.read_text()
    assert text.index("## Monitor") < text.index("### Where a run stands") < text.index("python status_llava.py")


# The README's compare and evaluate sections, run as a user would in a small project.

GAME = "england_epl/2015-2016/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham"


def section_blocks(heading):
    text = README.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return bash_blocks_of(text[start:end if end > 0 else None])


def bash_blocks_of(text):
    return [m.group(3) for m in FENCE.finditer(text) if m.group(2) == "bash" and not m.group(1)]


@pytest.mark.slow
def test_the_readmes_compare_and_evaluate_commands_run(tmp_path):
    """The compare block, then the evaluate block, line by line in a project set up as setup_llava.sh
    does, from inside it with SOCCER_PROJECT unset (the README's cd ~/soccer_project). Left out: the
    pip install line (the network; tests/run.sh installs the evaluator). /data/SoccerNet stands for
    the user's labels."""
    home = tmp_path / "home"
    project, qwen, labels = home / "soccer_project", home / "qwen_runs", tmp_path / "SoccerNet"
    for d in (project, qwen, labels / GAME):
        d.mkdir(parents=True)
    # what setup_llava.sh puts there: the scripts and llava_soccer/
    for src in [*ROOT.glob("*.py"), *ROOT.glob("llava_soccer/*.py"), *ROOT.glob("llava_soccer/*/*.py")]:
        dst = project / src.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    # a 10-video run (the README evaluates 0-9): 2 halves with labels, 8 of games without
    others = [f"england_epl/2015-2016/2015-09-1{g} - 17-00 Game {g}/{h}_224p.mkv" for g in range(4) for h in (1, 2)]
    videos = [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv", *others]
    (project / "videos.txt").write_text("".join(f"{v}\n" for v in videos))
    for video in range(2, 10):
        (project / f"final_predictions_llava_video_{video}.json").write_text("[]")
    goals = [(1, 120.0), (1, 1500.0), (2, 300.0)]
    (labels / GAME / "Labels-v2.json").write_text(json.dumps({"annotations": [
        {"gameTime": f"{h} - {int(t) // 60:02d}:{int(t) % 60:02d}", "label": "Goal", "position": str(int(t * 1000)),
         "team": "home", "visibility": "visible"} for h, t in goals]}))
    for video in (0, 1):
        times = [t for h, t in goals if h == video + 1]
        llava = [{"time": t - 1, "event_time": t + 0.5, "label": "Goal", "label_raw": "Goal", "team": "home",
                  "confidence": 0.8, "details": "d", "frame": 3, "raw": "{'label': 'Goal'}"} for t in times]
        qwen7b = [{"time": t - 2, "raw": '{"label": "Goal", "team": "home", "confidence": 0.9}'} for t in times]
        qwen7b.append({"time": 600.0, "raw": '{"label": "Foul", "team": "away", "confidence": 0.7}'})
        (project / f"final_predictions_llava_video_{video}.json").write_text(json.dumps(llava))
        for d in (project, qwen):
            (d / f"final_predictions_qwen7b_video_{video}.json").write_text(json.dumps(qwen7b))

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLAVA_", "SLURM_")) and k not in ("SOCCER_PROJECT", "SOCCERNET_DIR")}
    env.update(HOME=str(home), MPLBACKEND="Agg",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")]))
    for heading in ("## Compare with Qwen", "## Evaluate against SoccerNet"):
        (block,) = section_blocks(heading)
        lines = [line.replace("/data/SoccerNet", shlex.quote(str(labels))) for line in block.splitlines()
                 if not line.startswith("pip install")]
        assert len(lines) >= 3
        script = "set -euo pipefail\n" + "\n".join(f"echo {shlex.quote('>>> ' + line)}\n{line}" for line in lines)
        r = subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"{heading}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    assert (project / "counts.csv").is_file() and (project / "counts.png").is_file()
    ensemble = json.loads((project / "ensemble" / "final_predictions_ensemble_video_0.json").read_text())
    assert [e["label"] for e in ensemble] == ["Goal", "Goal"]
    summary = json.loads((project / "soccernet_eval" / "summary.json").read_text())
    assert {m["model"] for m in summary["models"]} >= {"llava"}
    assert (project / "soccernet_eval" / "precision_recall.png").is_file()


# --- issue 33 item 4: the commands the tools' messages tell users to run work as printed --------------------
# Each is taken from the real message (never retyped here) and run with bash in another directory. Those that
# cannot run here are listed in docs/testing.md ("Printed commands").

def tool_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLAVA_", "SLURM_")) and k not in ("SOCCER_PROJECT", "SOCCERNET_DIR")}
    return {**env, "LLAVA_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **extra}


def run_printed(command, cwd, **env):
    """command as a user pastes it into a new shell."""
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=tool_env(**env))


def check(project, model):
    """`bash submit_llava.sh --check 0 1`: the lines a job would stop with, at once. model: a folder whose
    config.json names LLaVA-NeXT (submit reads the model's family, its files' name, before anything else)."""
    (model / "config.json").write_text('{"model_type": "llava_next"}')
    return subprocess.run(["bash", str(ROOT / "submit_llava.sh"), "--check", "0", "1"], capture_output=True,
                          text=True, timeout=120, env=tool_env(SOCCER_PROJECT=str(project), LLAVA_MODEL=str(model)))


@pytest.mark.parametrize("damage,says", [
    ("edited", "Restore the list with: "),
    ("videos.txt not UTF-8", "is not valid UTF-8 (byte 12): restore it with: "),
    ("given list not UTF-8", "is right, restore it with: "),
])
def test_the_cp_that_restores_the_video_list_runs_as_printed(tmp_path, damage, says):
    """A hand-edited or damaged videos.txt (or its copy .videos_given.txt) stops every tool with a cp that
    restores it; in a project whose path has a space it used to copy nothing (unquoted)."""
    from llava_soccer import videos
    project = tmp_path / "my project"
    (project / "raw_data").mkdir(parents=True)
    for name in ("a game/1_224p.mkv", "a game/2_224p.mkv"):
        (project / "raw_data" / name).parent.mkdir(exist_ok=True)
        (project / "raw_data" / name).write_bytes(b"")
    listed = videos.manifest(project)
    target = project / (".videos_given.txt" if damage == "given list not UTF-8" else "videos.txt")
    target.write_bytes(b"a game/2_224p.mkv\na game/1_224p.mkv\n" if damage == "edited" else b"a game/1_224\xe9.mkv\n")
    r = check(project, tmp_path)
    assert r.returncode == 2 and says in r.stderr, r.stdout + r.stderr
    (command,) = re.findall(re.escape(says) + r"(cp .+?)(?: \(new videos.*)?(?: \(nothing started\))?$", r.stderr, re.M)
    r = run_printed(command, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = check(project, tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split(": ")[-1] for line in r.stdout.splitlines() if line.startswith("  video ")] == listed


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["status_llava.py", "submit_llava.sh"])
def test_the_setup_that_creates_a_missing_project_runs_as_printed(tmp_path, tool):
    """A project directory that does not exist: the message's setup command (quoted, setup_llava.sh's own
    path: it used to be `bash setup_llava.sh`, which runs only from the repository) creates it."""
    project = tmp_path / "new project"
    argv = [sys.executable, str(ROOT / tool), "--project", str(project)] if tool.endswith(".py") else \
        ["bash", str(ROOT / tool), "0", "1"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=tool_env(SOCCER_PROJECT=str(project)))
    assert r.returncode in (1, 2), r.stderr
    (command,) = re.findall(r"create it with (SOCCER_PROJECT=.+ bash \S+setup_llava\.sh)$", r.stderr, re.M)
    r = run_printed(command, cwd=tmp_path / "..", HOME=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (project / "raw_data").is_dir() and (project / "submit_llava.sh").is_file()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=tool_env(SOCCER_PROJECT=str(project)))
    assert "does not exist" not in r.stderr, r.stderr
