"""What identifying a file by its whole content costs (provenance.content_digest; CPU and disk only).

    python benchmarks/bench_fingerprint.py                        # a 1.5 GB file in /tmp, deleted after
    python benchmarks/bench_fingerprint.py --mb 1500 --checkpoint /tmp/ck   # also a checkpoint directory

It writes a file of --mb MB (random bytes), waits until it is older than provenance.RACY_S (a file changed
just now is not cached), then times:
- sha256 and blake2b on 256 MiB in memory (the CPU's rate; provenance uses sha256);
- the first digest, the file's pages dropped from the page cache first (posix_fadvise: a file read from
  disk, as a worker's first look at a video), then a second first digest with the pages cached (warm);
- a later lookup of the unchanged file (its cached digest: what status and submit pay per video), best of
  --repeat;
- the end digests made_by recorded before (first and last MiB), for comparison;
- with --checkpoint: provenance.model_revision of that directory, first (cache empty) and later.
"""
import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llava_soccer import provenance  # noqa: E402


def timed(fn):
    """(wall seconds, CPU seconds of this process, fn's result): on a shared machine the wall time includes
    waiting for a core, the CPU time does not."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def make_file(path: Path, size: int) -> None:
    block = os.urandom(64 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])  # the same 64 MiB repeated: the hash reads every byte all the same
            left -= n
            block = block[1:] + block[:1]  # (shifted, so no two blocks are equal)
        f.flush()
        os.fsync(f.fileno())


def drop_pages(path: Path) -> None:
    """This file's pages out of the page cache (no root needed, other files untouched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=1500, help="file size in MB (10^6 bytes; default 1500)")
    p.add_argument("--repeat", type=int, default=20, help="cached lookups timed; the best and median printed")
    p.add_argument("--dir", default=None, help="where to write the file (default a temporary directory)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory to time model_revision on")
    args = p.parse_args(argv)
    size = int(args.mb * 1e6)
    data = os.urandom(256 << 20)
    for name in ("sha256", "blake2b"):
        t0 = time.perf_counter()
        c0 = time.process_time()
        hashlib.new(name, data).digest()
        print(f"{name} in memory: {256 / (time.perf_counter() - t0):.0f} MiB/s wall, "
              f"{256 / (time.process_time() - c0):.0f} MiB/s of CPU time")
    data = None
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path, cache = Path(tmp) / "video.mkv", Path(tmp) / "fingerprints"
        dt, _, _ = timed(lambda: make_file(path, size))
        print(f"file: {size / 1e9:.2f} GB written in {dt:.1f} s")
        time.sleep(provenance.RACY_S + 0.5)  # older than RACY_S, so its digest is kept
        drop_pages(path)
        cold, cold_cpu, digest = timed(lambda: provenance.content_digest(path, cache))
        shutil.rmtree(cache)
        warm, warm_cpu, again = timed(lambda: provenance.content_digest(path, cache))
        assert again == digest and len(list(cache.iterdir())) == 1
        later = sorted(timed(lambda: provenance.content_digest(path, cache))[0] for _ in range(args.repeat))
        ends, _, _ = timed(lambda: provenance._sha(provenance._ends(path, size)))
        mib = size / 2**20
        print(f"first digest, read from disk: {cold:.2f} s wall ({mib / cold:.0f} MiB/s), {cold_cpu:.2f} s CPU")
        print(f"first digest, pages cached:   {warm:.2f} s wall ({mib / warm:.0f} MiB/s), {warm_cpu:.2f} s CPU")
        print(f"later lookup (unchanged file): best {later[0] * 1e3:.2f} ms, median "
              f"{later[len(later) // 2] * 1e3:.2f} ms of {args.repeat}")
        print(f"end digests (before): {ends * 1e3:.2f} ms")
    if args.checkpoint:
        files = [f for f in Path(args.checkpoint).iterdir() if f.suffix in provenance.CHECKPOINT_FILES]
        total = sum(f.stat().st_size for f in files)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            first, _, rev = timed(lambda: provenance.model_revision(args.checkpoint, Path(tmp)))
            later, _, again = timed(lambda: provenance.model_revision(args.checkpoint, Path(tmp)))
            assert again == rev
        print(f"checkpoint {args.checkpoint}: {len(files)} files, {total / 1e6:.1f} MB: model_revision first "
              f"{first:.3f} s, later {later * 1e3:.2f} ms ({rev})")


if __name__ == "__main__":
    main()
