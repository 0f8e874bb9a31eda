"""File names, the project default, the default model, the log lines' time stamp (llava_soccer/settings.py), the
exit codes the scripts share (cli.py) and the CUDA driver table (doctor.py) are defined once.

The shell scripts cannot import it, so they hold copies; these tests fail when a copy drifts.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from llava_soccer import claims, cli, doctor, settings, soccernet

SOCCERNET_PIN = soccernet.INSTALL_HINT.split()[-1]  # the official evaluator's version: "SoccerNet==0.2.0"
HOME_PROJECT = settings.PROJECT_DEFAULT.replace("~", "${HOME}", 1)
DRIVERS = doctor.parse_drivers(doctor.CUDA_DRIVERS)  # the least NVIDIA driver per CUDA major version
COPIES = [
    ("submit_llava.sh", f'local final="${{PROJECT}}/{settings.FINAL.format(model="${TAG}", video="${video}")}"'),
    ("submit_llava.sh", f'compgen -G "${{PROJECT}}/{settings.PARTIAL.format(model="${TAG}", video="$1", gpu="*")}"'),
    ("submit_llava.sh", f"      PROJECT={HOME_PROJECT}\n"),
    ("submit_llava.sh", "if [[ -d ${here}/raw_data || -f ${here}/videos.txt ]]; then"),  # settings.is_project
    ("submit_llava.sh", f"hub id or local checkpoint dir ({settings.DEFAULT_MODEL})"),
    ("setup_llava.sh", f"PROJECT=${{SOCCER_PROJECT:-{HOME_PROJECT}}}"),
    ("setup_llava.sh", f"readonly DEFAULT_MODEL={settings.DEFAULT_MODEL}"),
    ("setup_llava.sh", f"--no-deps {SOCCERNET_PIN};"),
    ("tools/install_env.sh", f"readonly SOCCERNET={SOCCERNET_PIN}"),
    ("setup_llava.sh", f"readonly CUDA12_DRIVER={DRIVERS['12']}\n"),
    ("setup_llava.sh", f"readonly CUDA13_DRIVER={DRIVERS['13']}\n"),
    ("submit_llava.sh", f"log() {{ printf '[%({settings.LOG_TIME})T] %s\\n' -1 \"$*\" >&2; }}"),
    ("submit_llava.sh", f"readonly EX_INTERRUPTED={cli.EXIT_RETRY} "),
    ("submit_llava.sh", f"readonly EX_INCOMPLETE={cli.EXIT_INCOMPLETE} "),
    ("submit_llava.sh", f"readonly EX_LOST_LOCK={claims.EXIT_LOST_LOCK} "),  # the heartbeat's lock: claims beat
    ("demo.sh", f'rm -f {settings.FINAL.format(model="llava", video="*")} '
                f'{settings.RAW_ANSWERS.format(model="llava", video="*")} '
                f'{settings.PARTIAL.format(model="llava", video="*", gpu="*")}'),
]


@pytest.mark.parametrize("script,copy", COPIES)
def test_the_shell_scripts_copies_match_settings(script, copy):
    assert copy in (ROOT / script).read_text(), f"{script} no longer says {copy!r}: update it or settings.py"


def test_name_patterns_read_back_what_the_templates_write():
    name = settings.final_path(ROOT, 12, "qwen2.5-vl+x").name
    assert name == "final_predictions_qwen2.5-vl+x_video_12.json"
    m = settings.name_pattern(settings.FINAL).fullmatch(name)
    assert (m["model"], m["video"]) == ("qwen2.5-vl+x", "12")
    assert settings.name_pattern(settings.FINAL, model="llava").fullmatch(name) is None
    partial = settings.name_pattern(settings.PARTIAL, video=3)
    assert partial.fullmatch("partial_results_llava_vid3_gpu10.json")["gpu"] == "10"
    assert partial.fullmatch("partial_results_llava_vid13_gpu1.json") is None
    assert settings.raw_answers_path(ROOT, 5).name == "raw_answers_llava_video_5.json.gz"


# Issue 32: a second model family names its files by its TAG (families.tag_of); LLaVA's names stay as they were.
LLAVA_NAMES = {"PARTIAL": "partial_results_llava_vid3_gpu1.json", "FINAL": "final_predictions_llava_video_3.json",
               "RAW_ANSWERS": "raw_answers_llava_video_3.json.gz", "LOCK": ".lock_llava_video_3.json",
               "FAILED_NOTE": ".failed_llava_video_3.json"}


@pytest.mark.parametrize("template", LLAVA_NAMES)
def test_llavas_file_names_are_those_of_every_earlier_run(template):
    assert getattr(settings, template).format(model="llava", video=3, gpu=1) == LLAVA_NAMES[template]
    helper = {"PARTIAL": lambda: settings.partial_path(ROOT, 3, 1), "FINAL": lambda: settings.final_path(ROOT, 3),
              "RAW_ANSWERS": lambda: settings.raw_answers_path(ROOT, 3), "LOCK": lambda: settings.lock_path(ROOT, 3),
              "FAILED_NOTE": lambda: settings.failed_note_path(ROOT, 3)}[template]
    assert helper() == ROOT / LLAVA_NAMES[template]  # the helpers' default: the default model's tag


def checkpoint_dir(root, model_type, name="ckpt"):
    """A directory whose config.json says model_type: all families.tag_of reads."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))
    return d


def family_tag(*model, **env):
    """`python -m llava_soccer.families tag [MODEL]`, an empty Hugging Face cache, no network: (exit, out, err)."""
    env = {**{k: v for k, v in os.environ.items() if k != "LLAVA_MODEL"}, "HF_HUB_OFFLINE": "1", **env}
    r = subprocess.run([sys.executable, "-m", "llava_soccer.families", "tag", *map(str, model)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=60)
    return r.returncode, r.stdout, r.stderr


def test_a_models_tag_comes_from_its_config_json_else_its_name(tmp_path):
    cache = {"HF_HUB_CACHE": str(tmp_path / "empty cache")}
    qwen, llava = checkpoint_dir(tmp_path, "qwen2_5_vl", "a"), checkpoint_dir(tmp_path, "llava_next", "b")
    assert family_tag(qwen) == (0, "qwen2.5vl\n", "")
    assert family_tag(llava) == (0, "llava\n", "")
    assert family_tag(**cache) == (0, "llava\n", "")  # the worker's default model
    assert family_tag(LLAVA_MODEL=str(qwen)) == (0, "qwen2.5vl\n", "")  # the worker's setting
    assert family_tag("Qwen/Qwen2.5-VL-7B-Instruct", **cache) == (0, "qwen2.5vl\n", "")  # not cached: its name
    other = checkpoint_dir(tmp_path, "idefics2", "c")
    code, out, err = family_tag(LLAVA_MODEL=str(other))
    assert (code, out) == (2, "") and err == (f"model {other}: its config.json has model_type 'idefics2', not a model "
                                              f"family this pipeline runs (supported: llava_next, qwen2_5_vl): use one "
                                              f"of those checkpoints, or add a family (docs/design.md#model-families) "
                                              f"(LLAVA_MODEL)\n")
    code, out, err = family_tag("org/some-model", **cache)
    assert code == 2 and len(err.splitlines()) == 1 and "org/some-model: not in the Hugging Face cache" in err


STAND_IN_WORKER = "import sys\n"  # the job's names are what this test is about: the workers do nothing
STAND_IN_MERGE = """\
import os, sys
from llava_soccer import families, settings
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
tag = families.tag_of(os.environ["LLAVA_MODEL"])
settings.final_path(settings.Path(args["--project"]), int(args["--video-index"]), tag).write_text("[]")
"""


def test_a_qwen_job_beside_llavas_files_runs_by_its_own_names_and_locks(tmp_path):
    """LLAVA_MODEL=<a Qwen2.5-VL checkpoint> bash submit_llava.sh 0 3 in a project where LLaVA has run: LLaVA's
    final (video 0) and a live LLaVA lock (video 2) are not Qwen's, so those videos run; Qwen's own final (video 1)
    is skipped as done and a live Qwen lock (video 3) keeps this job out of that video."""
    from llava_soccer import claims
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "llava_split_worker.py").write_text(STAND_IN_WORKER)
    (scripts / "merge_results_llava.py").write_text(STAND_IN_MERGE)
    (scripts / "llava_soccer").symlink_to(ROOT / "llava_soccer")
    qwen = checkpoint_dir(tmp_path, "qwen2_5_vl", "Qwen2.5-VL-7B-Instruct copy")
    project = tmp_path / "project"
    (project / "raw_data").mkdir(parents=True)
    for i in range(4):
        (project / "raw_data" / f"v{i}.mkv").write_bytes(b"")
    settings.final_path(project, 0, "llava").write_text('[{"time": 2.0, "raw": "None"}]')
    settings.final_path(project, 1, "qwen2.5vl").write_text("[]")
    assert claims.take(project, 2, os.getpid())[0]  # LLaVA's lock, held by a live process
    assert claims.take(project, 3, os.getpid(), model="qwen2.5vl")[0]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))},
           "SOCCER_PROJECT": str(project), "LLAVA_HOME": str(scripts), "LLAVA_PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": "", "LLAVA_MODEL": str(qwen)}
    r = subprocess.run(["bash", str(ROOT / "submit_llava.sh"), "0", "3"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(f"model {qwen} (files and locks tagged qwen2.5vl)") == 1
    assert re.search(r"\]   done: +0 2$", r.stderr, re.M) and re.search(r"\]   skipped: +1 3$", r.stderr, re.M)
    assert "video 3: being processed by local run pid" in r.stderr
    assert f"video 1: skipped, {settings.final_path(project, 1, 'qwen2.5vl')} exists" in r.stderr
    assert all(settings.final_path(project, i, "qwen2.5vl").exists() for i in (0, 2))
    assert settings.final_path(project, 0, "llava").read_text() == '[{"time": 2.0, "raw": "None"}]'
    assert sorted(p.name for p in project.glob(".lock_*")) == [".lock_llava_video_2.json",
                                                               ".lock_qwen2.5vl_video_3.json"]  # ours released


def test_a_model_of_no_family_stops_the_job_before_anything(tmp_path):
    project = tmp_path / "project"
    (project / "raw_data").mkdir(parents=True)
    (project / "raw_data" / "v0.mkv").write_bytes(b"")
    model = checkpoint_dir(tmp_path, "phi3_v")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))},
           "SOCCER_PROJECT": str(project), "LLAVA_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "LLAVA_MODEL": str(model)}
    r = subprocess.run(["bash", str(ROOT / "submit_llava.sh"), "0"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.endswith(f"ERROR: model {model}: its config.json has model_type 'phi3_v', not a model family "
                             f"this pipeline runs (supported: llava_next, qwen2_5_vl): use one of those checkpoints, "
                             f"or add a family (docs/design.md#model-families) (LLAVA_MODEL) "
                             f"(nothing started)\n")
    assert sorted(p.name for p in project.iterdir()) == ["raw_data"]
