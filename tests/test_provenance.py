"""What made a result (llava_soccer/provenance.py): what counts as the same run, and the code's version."""
import shutil
import subprocess
import sys

from conftest import ROOT
from llava_soccer import provenance

MADE = {"model": "m", "model_revision": "r1", "quantization": "nf4", "compute_dtype": "float16",
        "nf4_weights": "packed",
        "visual_tokens": "full", "prompt_sha256": "p", "max_new_tokens": 256, "temperature": 0.0, "top_p": None,
        "sampling": "5 fps", "code": "git a",
        "video_file": {"path": "a.mkv", "size": 10, "mtime": "2026-01-01T00:00:00", "sha256_ends": "s",
                       "duration_s": 60.0, "fps": 25.0, "frames": 1500}}


def test_the_same_run_ignores_the_code_and_the_files_mtime_only():
    same = {**MADE, "code": "git b", "video_file": {**MADE["video_file"], "mtime": "2026-02-02T00:00:00"}}
    assert provenance.differences(MADE, same) == []
    assert provenance.differences(MADE, {**MADE, "compute_dtype": "bfloat16"}) == ["compute_dtype float16 -> bfloat16"]
    assert provenance.differences(MADE, {**MADE, "video_file": {**MADE["video_file"], "size": 11}}) == [
        "video size 10 -> 11"]
    assert provenance.differences(None, MADE) == ["unknown origin (written before results recorded what made them)"]
    assert provenance.run_key(MADE) == provenance.run_key({**same, "video_file": {"path": "b.mkv"}})


def test_code_version_is_this_checkouts_commit_or_a_digest_of_a_copy(tmp_path):
    """made_by's "code": the git commit of this checkout; a copy of the package (setup_llava.sh's, here
    inside another git repository) gets a digest of its sources, not that repository's commit."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert provenance.code_version() == f"git {head}"
    other = tmp_path / "home"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    shutil.copytree(ROOT / "llava_soccer", other / "soccer_project" / "llava_soccer")
    r = subprocess.run([sys.executable, "-c", "from llava_soccer import provenance; print(provenance.code_version())"],
                       cwd=other / "soccer_project", capture_output=True, text=True, check=True)
    assert r.stdout.startswith("sources sha256:")
