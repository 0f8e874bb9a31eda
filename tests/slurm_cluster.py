"""A real one-node Slurm cluster (slurmctld + slurmd + munged) in a temporary directory.

Used by tests/test_slurm.py; also runnable by hand to try submit_llava.sh:

    python tests/slurm_cluster.py start      # prints  export SLURM_CONF=...  and the stop command
    python tests/slurm_cluster.py stop DIR

The node has 4 fake GPUs (gres files are symlinks to /dev/null, so jobs get
CUDA_VISIBLE_DEVICES like on a GPU node), 16 claimed CPUs, 128 GiB (SlurmdParameters=config_overrides),
one partition "debug": enough for submit_llava.sh's #SBATCH header as shipped. Recipe and pitfalls:
the team's notes beside the repository, ../shared/notes/FACTS.md ("A real Slurm cluster on one
machine"). Every daemon is started here and stopped by its PID, never by name.
"""
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "sacct")
NODE = "llavanode"
PARTITION = "debug"
GPUS = 4
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}
CPUS = 16  # as submit_llava.sh's #SBATCH --cpus-per-task (the machine may have fewer)


def _find(name):
    """A binary from PATH or the sbin directories Debian puts the daemons in."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def missing_binaries():
    return [name for name in BINARIES if _find(name) is None]


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    def __init__(self, base=None, kill_wait=30):
        # Everything lives under /tmp: munged's socket directory and all its parents must be
        # world-executable (pytest's tmp_path is not), and slurm.conf paths must not have spaces.
        self.dir = Path(tempfile.mkdtemp(prefix="llava-slurm-", dir=base or "/tmp"))
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "slurm.conf"
        self.jobcomp = self.dir / "jobcomp.txt"
        self.kill_wait = kill_wait
        self.procs = {}

    # -- configuration -------------------------------------------------------------------
    def _write_config(self):
        d = self.dir
        for sub in ("state", "spool", "log", "munge", "gpus"):
            (d / sub).mkdir(exist_ok=True)
        os.chmod(d / "munge", 0o755)
        for i in range(GPUS):
            link = d / "gpus" / f"nvidia{i}"
            if not link.is_symlink():
                link.symlink_to("/dev/null")
        ctld_port, slurmd_port = _free_ports(2)
        host = socket.gethostname().split(".")[0]
        user = getpass.getuser()
        self.munge_socket = d / "munge" / "munge.socket"
        self.conf.write_text(f"""\
ClusterName=llavatest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job is held before it may restart (default 120 s)
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait={self.kill_wait}
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=300
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=131072 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        (d / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File={d}/gpus/nvidia[0-{GPUS - 1}]\n")

    @property
    def env(self):
        """os.environ plus SLURM_CONF: every client command needs it."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- lifecycle -----------------------------------------------------------------------
    def _spawn(self, name, args):
        log = open(self.dir / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, start_new_session=True)
        log.close()

    def start(self, timeout=30):
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout):
        self._write_config()
        key = self.dir / "munge" / "munge.key"
        subprocess.run([_find("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        os.chmod(key, 0o600)
        self._spawn("munged", [_find("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.dir}/munge/munged.pid",
                               f"--log-file={self.dir}/log/munged.log", f"--seed-file={self.dir}/munge/munged.seed"])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged socket")
        self._spawn("slurmctld", [_find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_find("slurmd"), "-D", "-f", str(self.conf), "-N", NODE])
        self._wait(self._node_idle, timeout, f"node {NODE} idle")

    def _node_idle(self):
        r = subprocess.run([_find("sinfo"), "-h", "-n", NODE, "-o", "%t"], capture_output=True, text=True, env=self.env)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, ok, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.2)
        raise TimeoutError(f"no {what} after {timeout} s:\n{self.logs()}")

    def logs(self, tail=30):
        out = []
        for f in sorted((self.dir / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self, keep_dir=False):
        """Stop the daemons this object started (by PID; slurmd first), then remove the directory."""
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- client helpers ------------------------------------------------------------------
    def run(self, *args, check=True, cwd=None, env=None):
        """A Slurm client command (sbatch, squeue, ...) against this cluster."""
        r = subprocess.run([_find(args[0]), *map(str, args[1:])], capture_output=True, text=True,
                           env={**self.env, **(env or {})}, cwd=cwd)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def sbatch(self, *args, cwd, env=None):
        """Submit; return the job id."""
        r = self.run("sbatch", "--parsable", *args, cwd=cwd, env=env)
        return r.stdout.strip().split(";")[0]

    def job_states(self, job_id):
        """{job or array task id: state} for a job (all tasks of an array) still known to slurmctld."""
        r = self.run("squeue", "-h", "-j", job_id, "-o", "%i %T", "--states=all", check=False)
        return dict(line.split() for line in r.stdout.splitlines() if line.strip()) if r.returncode == 0 else {}

    def job_state(self, job_id):
        return self.job_states(job_id).get(str(job_id))

    def finished_runs(self, job_id):
        """[(state, exit code), ...] of each finished run of a job, from `sacct -c` (the jobcomp file)."""
        r = self.run("sacct", "-c", "-j", job_id, "-n", "-P", "-o", "JobID,State,ExitCode", check=False)
        return [tuple(line.split("|")[1:3]) for line in r.stdout.splitlines() if line.startswith(f"{job_id}|")]

    def job_info(self, job_id):
        """`scontrol show job` as a dict (JobState, Restarts, Reason, ...)."""
        r = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)

    def wait_job(self, job_id, timeout=600):
        """Poll squeue until the job (every task of an array) has ended; return its state(s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.job_states(job_id)
            if states and all(s in FINAL_STATES for s in states.values()):
                return states[str(job_id)] if list(states) == [str(job_id)] else states
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id}: {self.job_states(job_id)} after {timeout} s:\n{self.logs()}")

    def wait_until(self, ok, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(0.3)
        raise TimeoutError(f"no {what} after {timeout} s")


def main(argv):
    if argv[:1] == ["start"]:
        c = SlurmCluster().start()
        pids = " ".join(str(p.pid) for p in c.procs.values())
        print(f"export SLURM_CONF={c.conf}\n# stop: python tests/slurm_cluster.py stop {c.dir}   (daemon PIDs {pids})")
    elif argv[:1] == ["stop"] and len(argv) == 2:
        d = Path(argv[1])
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            f = d / pidfile
            if f.exists():
                try:
                    os.kill(int(f.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
