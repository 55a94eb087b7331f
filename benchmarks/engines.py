"""Snakemake executors side by side on one workflow: scheduler commands, wall time, end-to-notice latency.

    python -m benchmarks.engines [--engines slurm,cluster-generic,ddmq] [--samples 5] [--sleep 1]
                                 [--repeat 1] [--ddmq-plugin-path DIR] [--out FILE]

Run by hand, as a user who may submit SLURM jobs (root here), on a machine
where SLURM is up and ``snakemake`` 9 with the executor plugins is installed
beside this Python. Each engine runs the workflow of
``workflow_examples/cluster-generic/`` (``--samples N`` gives 2N + 1 jobs:
N ``make``, then N ``process`` each after its ``make``, then one
``summary`` after all of them) in a fresh directory with a fresh ddmq root:

* ``slurm`` -- ``snakemake-executor-plugin-slurm`` with its defaults;
* ``cluster-generic`` -- the example's profile: ``ddmq-sbatch`` and
  ``ddmq-jobstate --reconcile``;
* ``ddmq`` -- ``snakemake --executor ddmq`` (``snakemake_executor_plugin_ddmq``,
  from ``--ddmq-plugin-path`` if it is not installed with this checkout).

Every scheduler command is counted by a wrapper of the same name first in
PATH, which appends a line (time, whether it runs inside a job, command,
arguments) to a log and execs the real binary; jobs inherit that PATH
(sbatch exports the environment), so commands run inside jobs (a plugin's
``srun``, a trap's ``squeue``) are counted too, apart. ``sdiag``'s RPC
counts cannot tell one user's runs from another's on a shared cluster, so
they are not used. Wall time is Snakemake's, start to exit. The latency
from a job's end to Snakemake noticing it is taken for each job from its
end -- the ``published`` time of its ddmq end event, or sacct's ``End``
(whole seconds) where there is none -- to the moment this harness read
Snakemake's ``Finished jobid`` line for it. The machine's load average and
the other jobs queued at the start are recorded with each run: other
people's jobs share the node and the CPUs.

Writes ``benchmarks/results/engines-YYYYmmdd-HHMMSS.json`` and prints a
summary table; nothing in the repository changes otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.provision import REPO
from benchmarks.report import RESULTS

EXAMPLE = REPO / "workflow_examples" / "cluster-generic"
BIN = Path(sys.executable).parent
QUEUE = "snakemake"  # the profile's, and the ddmq executor's default
ENGINES = ("slurm", "cluster-generic", "ddmq")
# Every SLURM client command an executor or its jobs might run. Queries ask
# the controller or the accounting database what happened; actions change it.
QUERIES = ("squeue", "sacct", "scontrol", "sinfo", "sstat", "sacctmgr", "sshare", "sprio", "sdiag")
ACTIONS = ("sbatch", "scancel", "srun", "salloc")
RUN_TIMEOUT = 1800.0
# How a job's submission is logged: cluster-generic, the SLURM plugin, the ddmq plugin.
_SUBMITTED = re.compile(r"Submitted job (\d+) with external jobid '(\d+)'"
                        r"|Job (\d+) has been submitted (?:with SLURM jobid|as SLURM job) (\d+)")
_FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


def wrappers(directory: Path, log: Path) -> None:
    """A logging stand-in for every SLURM command, each exec'ing the real one."""
    directory.mkdir()
    for name in QUERIES + ACTIONS:
        real = shutil.which(name)
        if real is None:
            continue
        script = directory / name
        script.write_text(
            "#!/bin/sh\n"
            f'printf \'%s %s %s %s\\n\' "$(date +%s.%N)" "${{SLURM_JOB_ID:+job}}${{SLURM_JOB_ID:-executor}}" '
            f'{name} "$*" >> {log}\n'
            f'exec {real} "$@"\n')
        script.chmod(0o755)


def command_line(engine: str, samples: int, sleep: float) -> list[str]:
    """The snakemake command each engine is run with (resources as the example's profile gives them)."""
    config = ["--config", f"samples={samples}", f"sleep={sleep}"]
    if engine == "cluster-generic":
        return [str(BIN / "snakemake"), "--profile", "profile", *config]
    resources = ["--default-resources", "runtime=10", "mem_mb=500"]
    return [str(BIN / "snakemake"), "--executor", engine, "--jobs", "100", *resources, *config]


def load() -> dict[str, Any]:
    """The machine's load, and the jobs already in SLURM's queue (ours wait behind them)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %u %T"], capture_output=True, text=True, timeout=60).stdout
    return {"loadavg": list(os.getloadavg()), "other_jobs": len(out.splitlines()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_once(engine: str, samples: int, sleep: float, plugin_path: str | None) -> dict[str, Any]:
    """One run of the workflow by ``engine``; what it cost."""
    work = Path(tempfile.mkdtemp(prefix=f"ddmq-engines-{engine}-"))
    workdir, root, calls = work / "workflow", work / "root", work / "calls.log"
    workdir.mkdir()
    shutil.copy(EXAMPLE / "Snakefile", workdir)
    shutil.copytree(EXAMPLE / "profile", workdir / "profile")
    wrappers(work / "bin", calls)
    calls.touch()
    python_path = ([plugin_path] if plugin_path and engine == "ddmq" else []) + [str(REPO)]
    env = dict(os.environ, DDMQ_ROOT=str(root), PYTHONPATH=os.pathsep.join(python_path),
               PATH=os.pathsep.join([str(work / "bin"), str(EXAMPLE), str(BIN), os.environ["PATH"]]))
    before = load()
    lines: list[tuple[float, str]] = []
    start = time.time()
    proc = subprocess.Popen(command_line(engine, samples, sleep), cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in proc.stdout or ()))
    reader.start()
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    wall = time.time() - start
    reader.join()
    submitted = {}
    for _, line in lines:
        m = _SUBMITTED.search(line)
        if m:
            snakemake_id, slurm_id = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            submitted[snakemake_id] = slurm_id
    subprocess.run(["scancel", *submitted.values()], capture_output=True, timeout=60)  # anything left over
    result = {"engine": engine, "exit_status": code, "wall_seconds": round(wall, 2), "jobs": len(submitted),
              "load_before": before, "load_after": load(), "directory": str(work),
              "commands": count(calls), "latency": latency(lines, submitted, root)}
    if code != 0:
        result["output_tail"] = "".join(line for _, line in lines[-40:])
    return result


def count(calls: Path) -> dict[str, Any]:
    """The scheduler commands run, by command, from the executor's side and from inside jobs."""
    by: dict[str, dict[str, int]] = {"executor": {}, "in_jobs": {}}
    for line in calls.read_text().splitlines():
        _, where, name, *_ = line.split(" ", 3) + [""]
        side = by["executor" if where == "executor" else "in_jobs"]
        side[name] = side.get(name, 0) + 1
    executor = by["executor"]
    return {**by, "executor_queries": sum(n for c, n in executor.items() if c in QUERIES),
            "executor_total": sum(executor.values()),
            "all_total": sum(executor.values()) + sum(by["in_jobs"].values())}


def job_ends(submitted: dict[str, str], root: Path) -> dict[str, float]:
    """When each job ended: its ddmq end event's publish time, else sacct's End (whole seconds)."""
    ends: dict[str, float] = {}
    if (root / QUEUE).is_dir():
        from ddmq import Broker

        for msg in Broker(root).peek(QUEUE, n=10_000):
            ends.setdefault(str(msg.message.get("job_id")), msg.published / 1e9)
    missing = [job for job in submitted.values() if job not in ends]
    if missing:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(missing), "-o", "JobID,End"],
                             capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            job, _, end = line.partition("|")
            try:
                ends[job] = time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                pass
    return ends


def latency(lines: list[tuple[float, str]], submitted: dict[str, str], root: Path) -> dict[str, Any]:
    """Seconds from each job's end to Snakemake's 'Finished jobid' line for it: median, max, each."""
    ends = job_ends(submitted, root)
    each = {}
    for seen, line in lines:
        m = _FINISHED.search(line)
        if m and submitted.get(m.group(1)) in ends:
            slurm_id = submitted[m.group(1)]
            each[slurm_id] = round(seen - ends[slurm_id], 3)
    values = list(each.values())
    return {"median": round(statistics.median(values), 3) if values else None,
            "max": max(values) if values else None, "each": each,
            "source": "ddmq event" if (root / QUEUE).is_dir() else "sacct End (whole seconds)"}


def plugin_problem(engine: str, plugin_path: str | None) -> str | None:
    """Why ``engine`` cannot run here, or None."""
    module = {"slurm": "snakemake_executor_plugin_slurm",
              "cluster-generic": "snakemake_executor_plugin_cluster_generic",
              "ddmq": "snakemake_executor_plugin_ddmq"}[engine]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (plugin_path, str(REPO)) if p))
    done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                          cwd="/")  # not this checkout, which -c would put first in sys.path
    return None if done.returncode == 0 else f"{module} cannot be imported: {done.stderr.strip().splitlines()[-1]}"


def summary(runs: list[dict[str, Any]]) -> str:
    rows = ["engine            exit  jobs  wall s  executor queries  executor cmds  in-job cmds  "
            "end->noticed median/max s  load before"]
    for r in runs:
        if "skipped" in r:
            rows.append(f"{r['engine']:<17} skipped: {r['skipped']}")
            continue
        c, lat = r["commands"], r["latency"]
        rows.append(f"{r['engine']:<17} {r['exit_status']!s:>4}  {r['jobs']:>4}  {r['wall_seconds']:>6.1f}  "
                    f"{c['executor_queries']:>16}  {c['executor_total']:>13}  {sum(c['in_jobs'].values()):>11}  "
                    f"{lat['median']!s:>12} / {lat['max']!s:<12}  {r['load_before']['loadavg'][0]:.2f}, "
                    f"{r['load_before']['other_jobs']} jobs queued")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of " + ", ".join(ENGINES))
    parser.add_argument("--samples", type=int, default=5, help="2N + 1 jobs (default 5: 11 jobs)")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each job sleeps (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each engine, alternating (default 1)")
    parser.add_argument("--ddmq-plugin-path", help="a directory holding snakemake_executor_plugin_ddmq, "
                                                   "put first in the ddmq engine's PYTHONPATH")
    parser.add_argument("--out", type=Path, help="the JSON file (default benchmarks/results/engines-DATE.json)")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")
    runs = []
    for _ in range(args.repeat):
        for engine in engines:
            problem = plugin_problem(engine, args.ddmq_plugin_path)
            if problem:
                runs.append({"engine": engine, "skipped": problem})
                continue
            print(f"running {engine} ...", file=sys.stderr, flush=True)
            runs.append(run_once(engine, args.samples, args.sleep, args.ddmq_plugin_path))
    out = args.out or RESULTS / time.strftime("engines-%Y%m%d-%H%M%S.json", time.gmtime())
    out.write_text(json.dumps({"samples": args.samples, "sleep": args.sleep, "jobs": 2 * args.samples + 1,
                               "cpus": os.cpu_count(), "runs": runs}, indent=1) + "\n")
    print(summary(runs))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
