"""File names, the project default, the default model, the log lines' time stamp (llava_soccer/settings.py), the
exit codes the scripts share (cli.py) and the CUDA driver table (doctor.py) are defined once.

The shell scripts cannot import it, so they hold copies; these tests fail when a copy drifts.
"""
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
