"""The video list (videos.manifest) on a SoccerNet-sized tree of empty .mkv files (CPU only).

    python benchmarks/bench_manifest.py                      # 28,000 videos in a temporary directory
    python benchmarks/bench_manifest.py --videos 7000 14000 28000 --repeat 3
    python benchmarks/bench_manifest.py --code /tmp/old      # another checkout's llava_soccer/ (before/after)

The tree is raw_data/league_L/season_S/game_G/{1,2}_224p.mkv, two halves per game as SoccerNet's.
Per size it times the first call (scans raw_data/, writes videos.txt) and a later call (scans,
finds nothing new): the call every worker and every merge makes, best of --repeat.
"""
import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path


def make_tree(raw: Path, n_videos: int) -> None:
    for g in range(n_videos // 2):
        game = raw / f"league_{g % 7}" / f"season_{g // 7 % 10}" / f"game_{g:05d}"
        game.mkdir(parents=True, exist_ok=True)
        for half in (1, 2):
            (game / f"{half}_224p.mkv").touch()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, nargs="+", default=[28000], help="tree sizes (default 28000)")
    p.add_argument("--repeat", type=int, default=3, help="later calls timed per size; the best is printed")
    p.add_argument("--code", default=str(Path(__file__).resolve().parents[1]),
                   help="directory holding the llava_soccer/ to time (default this checkout)")
    p.add_argument("--dir", default=None, help="where to build the trees (default a temporary directory)")
    args = p.parse_args(argv)
    sys.path.insert(0, args.code)
    videos = importlib.import_module("llava_soccer.videos")
    print(f"llava_soccer from {Path(videos.__file__).parent}")
    print("| videos | first call (writes videos.txt) | later call (nothing new), best of "
          f"{args.repeat} |\n| --- | --- | --- |")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.videos:
            project = Path(tmp) / f"p{n}"
            make_tree(project / "raw_data", n)
            t = time.perf_counter()
            listed = videos.manifest(project)
            first = time.perf_counter() - t
            assert len(listed) == n, len(listed)
            later = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                videos.manifest(project)
                later.append(time.perf_counter() - t)
            print(f"| {n:,} | {first:.2f} s | {min(later):.2f} s |", flush=True)


if __name__ == "__main__":
    main()
