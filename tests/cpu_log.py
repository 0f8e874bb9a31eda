"""Reads a LLAVA_TEST_CPU file (tests/conftest.py): where the test run's CPU went and when the cores idled.

    LLAVA_TEST_CPU=/tmp/cpu.txt bash tests/run.sh && python tests/cpu_log.py /tmp/cpu.txt

Prints the tests that used the most CPU, each xdist process's span and CPU, and the counted CPU per 30 s of the
run as a percentage of one core (2 cores: 200 is full). The Slurm jobs' CPU is not counted (slurmd's children), so
a stretch below the cores while the Slurm tests run is partly theirs.
"""
import collections
import sys


def main(path, top=15, step=30):
    rows = []
    for line in open(path):
        own, kids, wall, end, process, node = line.split(maxsplit=5)
        rows.append((float(own) + float(kids), float(wall), float(end), process, node.strip()))
    if not rows:
        sys.exit(f"{path} has no lines: run the tests with LLAVA_TEST_CPU={path}")
    t0 = min(end - wall for _, wall, end, _, _ in rows)
    print(f"{len(rows)} tests, {sum(r[0] for r in rows):.0f} CPU s counted; the most:")
    for cpu, wall, _, _, node in sorted(rows, reverse=True)[:top]:
        print(f"  {cpu:6.1f} s CPU {wall:6.1f} s wall  {node}")
    per_bin = collections.Counter()
    by_process = collections.defaultdict(list)
    for cpu, wall, end, process, _ in rows:
        start = end - wall - t0
        by_process[process].append((start, end - t0, cpu))
        t = start
        while t < end - t0 and wall > 0:  # the test's CPU spread evenly over its wall time
            edge = min(end - t0, (t // step + 1) * step)
            per_bin[int(t // step)] += cpu * (edge - t) / wall
            t = edge
    for process, spans in sorted(by_process.items()):
        print(f"{process}: {len(spans)} tests, {min(s for s, _, _ in spans):.0f}-{max(e for _, e, _ in spans):.0f} s, "
              f"{sum(c for _, _, c in spans):.0f} CPU s")
    print(f"CPU per {step} s, % of one core: " +
          " ".join(f"{b * step}:{per_bin[b] / step * 100:.0f}" for b in sorted(per_bin)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
