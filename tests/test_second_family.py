"""Issue 32's "done when": a tiny Qwen2.5-VL checkpoint laid out as the hub's goes through the worker, merge, status,
compare and evaluate on CPU, with token and class scores, beside LLaVA's run of the same project.

One SoccerNet-laid-out project (raw_data/<league>/<season>/<game>/1_224p.mkv and 2_224p.mkv, short barcoded H.264
halves, the game's Labels-v2.json), two tiny parrot checkpoints that answer every window with a goal (LLaVA-NeXT's
and Qwen2.5-VL's), and the real scripts run as a user runs them: `bash submit_llava.sh 0 1` without Slurm, one CPU
worker per video, once per model, then again (both videos skipped); status_llava.py, compare_counts.py and
evaluate_soccernet.py without flags naming the models. The pipelines run once (the module's fixture); each test
asserts on what they left.
"""
import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import GOAL_ANSWER, ROOT, load
from llava_soccer import settings, synthetic
from llava_soccer.families import qwen2_5_vl

# One process runs the whole module (tests/run.sh: --dist loadgroup): the pipelines run once, in its fixture.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("second_family")]

GAME = "england_epl/2015-2016/2015-08-29 - 17-00 Chelsea 1 - 2 Crystal Palace"  # <league>/<season>/<game>
QWEN, LLAVA = "qwen2.5vl", "llava"  # the families' TAGs: the model's name in every file name
VIDEOS = (0, 1)


def env_for(project, model):
    """The environment of a user's local run (no Slurm) of `model` in `project`: one CPU worker per video, fp32 (a
    worker process costs seconds of CPU to start; two workers per video and their merge: tests/test_demo.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))}
    return {**env, "SOCCER_PROJECT": str(project), "LLAVA_MODEL": str(model), "LLAVA_QUANT": "fp32",
            "LLAVA_NUM_WORKERS": "1", "CUDA_VISIBLE_DEVICES": "", "LLAVA_PYTHON": sys.executable,
            "LLAVA_HOME": str(ROOT), "HF_HUB_OFFLINE": "1"}


def script(env, *argv, timeout=600):
    """One of the repository's scripts as a user runs it: (exit code, stdout, stderr)."""
    cmd = ["bash", *argv] if argv[0].endswith(".sh") else [sys.executable, *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def submit(project, model):
    return script(env_for(project, model), "submit_llava.sh", "0", "1", timeout=900)


def project_files(project):
    """{name: bytes} of the pipeline's files in the project (finals, raw answers, partials, locks, notes)."""
    return {p.name: p.read_bytes() for p in project.iterdir() if p.is_file() and p.name != "videos.txt"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, video_10s):
    """The project after LLaVA's run, then Qwen's, then a rerun of each; what each step printed."""
    root = tmp_path_factory.mktemp("second family")
    project = root / "project"
    halves = project / "raw_data" / GAME
    halves.mkdir(parents=True)
    (halves / "1_224p.mkv").symlink_to(video_10s)
    synthetic.make_video(halves / "2_224p.mkv", 8, "25")
    labels = root / "soccernet" / GAME / "Labels-v2.json"  # goals where the parrots' windows put theirs, and one not
    labels.parent.mkdir(parents=True)
    labels.write_text(json.dumps({"annotations": [
        {"gameTime": f"{half} - 00:{s:02d}", "label": "Goal", "position": str(s * 1000), "team": "home",
         "visibility": "visible"} for half, s in ((1, 3), (1, 7), (2, 5))]}))
    llava = synthetic.make_checkpoint(root / "tiny llava", "tiny", answer=GOAL_ANSWER)
    qwen = qwen2_5_vl.build_checkpoint(root / "tiny qwen", "tiny", answer=GOAL_ANSWER)

    out = {"project": project, "soccernet": labels.parents[3], "llava": llava, "qwen": qwen}
    out["llava_run"] = submit(project, llava)
    out["after_llava"] = project_files(project)
    out["qwen_run"] = submit(project, qwen)
    out["after_qwen"] = project_files(project)
    out["qwen_rerun"] = submit(project, qwen)
    out["llava_rerun"] = submit(project, llava)
    out["after_reruns"] = project_files(project)
    return out


def test_both_models_run_through_submit_and_their_finals_sit_side_by_side(run):
    for name in ("llava_run", "qwen_run"):
        rc, _, err = run[name]
        assert rc == 0, f"{name}: {err}"
        assert "1 worker(s) per video, GPUs: none (CPU)" in err and re.search(r"summary: 2 done, 0 skipped", err), err
    assert f"(files and locks tagged {QWEN})" in run["qwen_run"][2]
    project = run["project"]
    for i in VIDEOS:
        for tag in (LLAVA, QWEN):
            assert settings.final_path(project, i, tag).is_file()
            assert settings.raw_answers_path(project, i, tag).is_file()
    llavas = {n: b for n, b in run["after_llava"].items()}
    assert llavas and all(QWEN not in n for n in llavas)
    assert {n: run["after_qwen"][n] for n in llavas} == llavas  # LLaVA's files untouched by Qwen's run
    left = [p.name for p in project.iterdir() if p.name.startswith(("partial_results_", ".lock_", ".failed_"))]
    assert left == []


def qwen_records(run, i):
    return load(settings.final_path(run["project"], i, QWEN))


@pytest.mark.parametrize("video", VIDEOS)
def test_qwens_final_records_its_family_model_and_scores(run, video):
    """Every event of Qwen's final: a goal, made_by naming the family and the checkpoint, the probability of its
    label's tokens and its window's 17 class scores; the raw answers keep each window's none_prob and scores."""
    records = qwen_records(run, video)
    assert records and {r["label"] for r in records} == {"Goal"}
    for r in records:
        assert r["made_by"]["family"] == "qwen2_5_vl" and r["made_by"]["model"] == str(run["qwen"])
        assert r["made_by"]["class_scores"] is True
        assert 0 < r["token_prob"] <= 1
        assert set(r["class_scores"]) == set(settings.SOCCERNET_CLASSES) and len(r["class_scores"]) == 17
        assert all(0 <= p <= 1 for p in r["class_scores"].values())
        assert r["video"] == f"{GAME}/{video + 1}_224p.mkv"  # its raw_data/ path
    assert load(settings.final_path(run["project"], video, LLAVA))[0]["made_by"]["family"] == "llava_next"
    with gzip.open(settings.raw_answers_path(run["project"], video, QWEN), "rt") as f:
        archive = json.load(f)
    windows = archive["windows"] if isinstance(archive, dict) else archive
    assert windows and all(w["status"] == "ok" and w["raw"] == GOAL_ANSWER for w in windows)
    assert all(0 <= w["none_prob"] <= 1 and len(w["class_scores"]) == 17 for w in windows)


def status_of(run, **env):
    rc, out, err = script({**env_for(run["project"], run["qwen"]), **env}, "status_llava.py")
    assert rc == 0, err
    return out


def counts(run, tag):
    """{video: events in its final} of one model."""
    return {i: len(load(settings.final_path(run["project"], i, tag))) for i in VIDEOS}


@pytest.mark.parametrize("model,tag,other", [("qwen", QWEN, LLAVA), (None, LLAVA, QWEN)])
def test_status_shows_each_models_videos_done_and_names_the_other(run, model, tag, other):
    """LLAVA_MODEL=<the Qwen checkpoint>: Qwen's videos; no LLAVA_MODEL: LLaVA's (the default model); each time one
    line names the other model's finals."""
    out = status_of(run, LLAVA_MODEL=str(run[model]) if model else "")
    lines = out.splitlines()
    assert lines[0].startswith("status of ") and f"({tag}) in {run['project']}" in lines[0], out
    assert lines[1].startswith(f"other models' finals here: {other} (2 videos)"), out
    for i, n in counts(run, tag).items():
        assert any(re.match(rf"{i}\s+done\s+{n} events: Goal {n}\s", line) for line in lines), out
    assert "total: 2 videos: 2 done;" in out, out


def test_compare_without_models_compares_qwen_with_llava(run):
    rc, out, err = script(env_for(run["project"], run["llava"]), "compare_counts.py")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{QWEN} vs {LLAVA} (found in {run['project']}; --models A B compares others)"), out
    q, a = sum(counts(run, QWEN).values()), sum(counts(run, LLAVA).values())
    assert q == a > 0  # the same parrot answer in the same windows: the same events
    total = next(line.split() for line in lines if line.split()[:1] == ["total"])
    assert total == ["total", str(q), str(a), str(q), "0", "0", "0"], out
    assert any(line.startswith(f"{QWEN}: made by {run['qwen']} @ dir sha256:") for line in lines), out


def test_evaluate_without_models_scores_both_with_every_ranking(run):
    """Qwen's token and class rankings are scored, not n/a (the seed's Qwen files had neither)."""
    project = run["project"]
    rc, out, err = script(env_for(project, run["llava"]), "evaluate_soccernet.py", "--soccernet",
                          str(run["soccernet"]), "--metrics", "at5")
    assert rc == 0, err
    assert f"models: {LLAVA}, {QWEN} (every model with finals in {project}; --models picks)" in out, out
    assert f"== {LLAVA}: 2 videos, 1 game ==" in out and f"== {QWEN}: 2 videos, 1 game ==" in out, out
    summary = load(project / "soccernet_eval" / "summary.json")
    by_model = {s["model"]: s for s in summary["models"]}
    assert list(by_model) == [LLAVA, QWEN]
    for tag in (LLAVA, QWEN):
        assert by_model[tag]["made_by"]
        for ranking in ("confidence", "token", "class"):
            ranked = by_model[tag]["rankings"][ranking]
            assert ranked["available"], (tag, ranking, ranked.get("note"))
            assert 0 < ranked["official"]["at5"]["a_mAP_per_class"]["Goal"] <= 1, (tag, ranking)
        for folder in ("", "token_ranking/", "class_ranking/"):
            assert (project / "soccernet_eval" / f"{folder}{tag}" / GAME / "results_spotting.json").is_file()
    assert "n/a" not in out, out
    per_class = (project / "soccernet_eval" / "per_class.csv").read_text()
    assert f"\n{LLAVA}," in per_class and f"\n{QWEN}," in per_class, per_class[:300]


def test_reruns_skip_both_videos_of_each_model(run):
    for name, tag in (("qwen_rerun", QWEN), ("llava_rerun", LLAVA)):
        rc, _, err = run[name]
        assert rc == 0, f"{name}: {err}"
        assert re.search(r"summary: 0 done, 2 skipped", err), err
        for i in VIDEOS:
            assert f"video {i}: skipped, {settings.final_path(run['project'], i, tag)} exists" in err, err
    assert run["after_reruns"] == run["after_qwen"]  # nothing rewritten
