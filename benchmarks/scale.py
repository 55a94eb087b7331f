"""A fresh ``ddmq consume -n 1`` with a million messages queued, against one with 100 (issue 15).

    python3 -m benchmarks.scale                  # 100 and 1 000 000 messages, local disk and tmpfs (~7 min)
    python3 -m benchmarks.scale --quick          # 100 and 100 000 messages
    python3 -m benchmarks.scale --tree /path/to/checkout --fs disk --no-doc
    python3 -m benchmarks.scale --render benchmarks/results/scale-A.json [scale-B.json ...]

Every ``ddmq consume``, ``ddmq-dispatch`` run and job-end ``ddmq-notify`` is
a new process: nothing learnt about a queue survives to the next call, so
what a fresh process pays to find the head of a long queue is what every
batch job pays. For each filesystem (``--fs``: ``disk``, the cache
directory's own; ``tmpfs``, /dev/shm; ``ext4-journal``, an ext4 image with a
journal and inodes enough for a million files, root only), one fresh root
per size holding one queue, filled through the library of the tree under
test (``benchmarks/keeper.py``: ``publish_many``, 10 000 at a time,
``durable: false``), and then:

1. the wall time of a fresh ``ddmq consume -n 1 QUEUE --root R``: the
   console script installed from the tree, the whole process, timed around
   ``subprocess.run`` as W4 is; ``--reps`` times per size, the sizes taking
   turns in a rotating order so that the machine's load falls on all alike.
   After each, the keeper publishes one message back (not timed), so the
   queue keeps its length;
2. the same for a fresh ``ddmq publish QUEUE MESSAGE`` (the keeper takes
   one back after each), for context;
3. ``strace -c -f`` of one more fresh consume per size: system calls in
   all, ``getdents64`` (directory listing) calls, filesystem calls;
4. the most entries of any directory in the root (``os.scandir``, links not
   followed), and which directory that is.

The targets: consume at the largest size costs at most 2x what it costs at
the smallest (the median of the per-repetition ratios; the ratio of the
medians is kept too), and no directory holds over 10 000 entries. The tree
(``--tree``, default this checkout) is copied and installed non-editable
into its own venv in the cache directory, as ``benchmarks.ab`` does, and
nothing here looks inside a queue: the same run measures the flat
``ready/`` and a sharded one. The queues live under the cache directory and
/dev/shm, never in the repository, and are removed at the end, also on
failure or Ctrl-C. Writes ``benchmarks/results/scale-TIMESTAMP.json`` and
the section "A million queued messages (issue 15)" of docs/performance.md
(``--no-doc`` prints it instead); ``--render`` redoes that section from
results files (several: before and after, side by side) without measuring.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.batch import paired_ratio
from benchmarks.provision import (REPO, Ext4Image, add_cache_option, enter_cache, ensure_apt, ensure_venv, fs_info,
                                  install_working_tree, log, machine_info, run_command)
from benchmarks.run import on_signal
from benchmarks.workloads import FS_SYSCALLS, parse_strace_summary

KEEPER = Path(__file__).resolve().parent / "keeper.py"
QUEUE = "scale"
SIZES, QUICK_SIZES = (100, 1_000_000), (100, 100_000)
FILESYSTEMS = ("disk", "tmpfs", "ext4-journal")
FILL_BATCH = 10_000
HEADING = "### A million queued messages (issue 15)"
RATIO_GOAL, ENTRIES_GOAL = 2.0, 10_000
# The commands measured run the tree installed in the venv: a PYTHONPATH
# pointing at some checkout would shadow it, and DDMQ_ROOT is given as --root.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DDMQ_ROOT")}


class MillionFileExt4Image(Ext4Image):
    """The suite's ext4 image with a journal, large enough for a million one-block files.

    mkfs.ext4's default of one inode per 16 KiB gives the suite's 4 GiB
    image 262 144 inodes; one per 4 KiB on a 16 GiB image (sparse: only
    what is written takes space on the disk) gives four million.
    """

    GIB = 16
    MKFS = [*Ext4Image.MKFS, "-i", "4096"]


class Keeper:
    """A ``keeper.py`` process, run by the interpreter of the tree measured, holding one queue at its length.

    In its own session, so that a Ctrl-C reaches only this harness, which
    then stops it in order.
    """

    def __init__(self, python: Path, root: Path):
        self.proc = subprocess.Popen([str(python), str(KEEPER), str(root), QUEUE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV, start_new_session=True)

    def ask(self, request: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the queue keeper exited ({self.proc.wait()}) at {request!r}; see its error above")
        answer = json.loads(line)
        if "error" in answer or answer.get("taken") == 0:
            raise RuntimeError(f"the queue keeper could not do {request!r}: {answer}")
        return answer

    def fill(self, n: int) -> float:
        """Publish ``n`` messages, ``FILL_BATCH`` at a time; the seconds the publishing took."""
        seconds = 0.0
        for done in range(0, n, FILL_BATCH):
            seconds += self.ask(f"add {min(FILL_BATCH, n - done)}")["seconds"]
            if (done + FILL_BATCH) % 100_000 == 0:
                log(f"  filled {done + FILL_BATCH:,} of {n:,} ({seconds / (done + FILL_BATCH) * 1e6:.0f} µs each)")
        return seconds

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def timed(cmd: list[str]) -> float:
    """The wall time of one run of ``cmd``, a whole process; a failure is an error, not a figure."""
    started = time.perf_counter()
    done = run_command(cmd, check=False, capture_output=True, env=ENV)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise RuntimeError(f"`{' '.join(cmd[1:3])}` exited {done.returncode}: {said}")
    return seconds


def syscalls(cmd: list[str]) -> dict:
    """What one run of ``cmd`` asks of the kernel (strace -c -f): in all, listing directories, the filesystem."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as summary:
        run_command(["strace", "-f", "-c", "-o", summary.name, *cmd], capture_output=True, env=ENV)
        calls = parse_strace_summary(Path(summary.name).read_text())
    return {"total": sum(calls.values()), "getdents64": calls.get("getdents64", 0),
            "filesystem": sum(n for call, n in calls.items() if call in FS_SYSCALLS), "by_call": calls}


def largest_directory(root: Path) -> dict:
    """The most entries any directory in ``root`` holds, and which (relative to ``root``); links not followed."""
    most, where = 0, "."
    pending = [root]
    while pending:
        directory = pending.pop()
        count = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
        if count > most:
            most, where = count, str(directory.relative_to(root))
    return {"entries": most, "directory": where}


def measure(base: Path, venv: Path, sizes: list[int], reps: int) -> dict:
    """Every measurement at every size on one filesystem (``base``); the queues are gone when it returns."""
    ddmq = str(venv / "bin" / "ddmq")
    roots = {n: base / f"root-{n}" for n in sizes}
    commands = {n: {"consume": [ddmq, "consume", "-n", "1", QUEUE, "--root", str(root)],
                    "publish": [ddmq, "publish", QUEUE, "one more", "--root", str(root)]} for n, root in roots.items()}
    undo = {"consume": "add 1", "publish": "take"}  # what keeps the length after each
    keepers: dict[int, Keeper] = {}
    at: dict[str, dict] = {}
    runs = []
    try:
        for n in sizes:
            log(f"filling {roots[n]} with {n:,} messages")
            keepers[n] = Keeper(venv / "bin" / "python", roots[n])
            fill_s = keepers[n].fill(n)
            at[str(n)] = {"fill_us_per_msg": fill_s / n * 1e6, "largest_directory": largest_directory(roots[n])}
            log(f"  largest directory: {at[str(n)]['largest_directory']}")
            for what, cmd in commands[n].items():  # warm-up: page cache, bytecode
                timed(cmd)
                keepers[n].ask(undo[what])
        for rep in range(reps):
            turn = rep % len(sizes)
            for n in sizes[turn:] + sizes[:turn]:
                run = {"rep": rep, "size": n, "loadavg": os.getloadavg()[0]}
                for what, cmd in commands[n].items():
                    run[f"{what}_s"] = timed(cmd)
                    keepers[n].ask(undo[what])
                runs.append(run)
            log(f"  repetition {rep + 1} of {reps}: consume " + ", ".join(
                f"{r['size']:,}: {r['consume_s'] * 1e3:.0f} ms" for r in runs if r["rep"] == rep))
        for n in sizes:
            at[str(n)]["consume_syscalls"] = syscalls(commands[n]["consume"])
            keepers[n].ask("add 1")
            log(f"  strace consume at {n:,}: {at[str(n)]['consume_syscalls']['total']} syscalls, "
                f"{at[str(n)]['consume_syscalls']['getdents64']} getdents64")
    finally:
        for keeper in keepers.values():
            keeper.stop()
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
    return {"sizes": at, "runs": runs}


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "p90": statistics.quantiles(xs, n=10, method="inclusive")[-1],
            "min": min(xs), "max": max(xs)}


def summarise(data: dict) -> dict:
    """Per filesystem: each size's medians and p90s, and the ratios of the largest size to the smallest."""
    small, large = str(min(data["sizes"])), str(max(data["sizes"]))
    out = {}
    for fs, measured in data["filesystems"].items():
        runs = measured["runs"]
        by_rep: dict[int, dict[str, dict]] = {}
        for r in runs:
            by_rep.setdefault(r["rep"], {})[str(r["size"])] = r
        per_size = {str(n): {what: spread([r[f"{what}_s"] for r in runs if r["size"] == n])
                             for what in ("consume", "publish")} for n in data["sizes"]}
        ratio = paired_ratio(by_rep, large, small, "consume_s")
        entries = measured["sizes"][large]["largest_directory"]["entries"]
        out[fs] = {"per_size": per_size, "consume_ratio": ratio,
                   "consume_ratio_of_medians": per_size[large]["consume"]["median"]
                   / per_size[small]["consume"]["median"],
                   "publish_ratio": paired_ratio(by_rep, large, small, "publish_s"),
                   "consume_ratio_met": ratio is not None and ratio <= RATIO_GOAL,
                   "largest_entries": entries, "largest_entries_met": entries <= ENTRIES_GOAL}
    return out


def tree_label(data: dict) -> str:
    """The tree's commit (its directory's name if it is no git checkout), and whether its package had edits."""
    tree = data["tree"]
    return (tree["commit"][:7] or Path(tree["path"]).name) + (
        " + uncommitted" if tree["uncommitted_changes_in_package"] else "")


def ms(x: float) -> str:
    return f"{x * 1e3:,.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def render(results: list[dict]) -> str:
    """The docs/performance.md section: one or more runs (before and after a change), side by side."""
    L = [HEADING, "",
         "A fresh `ddmq consume -n 1 QUEUE --root R` and a fresh `ddmq publish QUEUE MESSAGE`, each the whole "
         "process (the console script of the tree installed non-editable, timed around `subprocess.run` as W4 "
         "is), on queues of each size held at their length (one message published back after each consume, "
         "one taken after each publish, through the library, not timed), the sizes alternating in every "
         "repetition. The queues are filled through the library (`publish_many`, 10 000 at a time) with "
         "`durable: false`, so the commands publish without a barrier too. System calls: `strace -c -f` of one "
         "more fresh consume. Largest directory: the most entries of any directory in the root "
         "(`os.scandir`, links not followed). Ratio: the median of the per-repetition ratios (the ratio of "
         "the medians in brackets). Everything is in the page cache: a consume on a cold cache, or on a "
         "network filesystem where every listing block is a round trip, pays more for every entry.", ""]
    for data in results:
        subject = data["tree"]["describe"].partition(" ")[2]
        subject = subject if len(subject) <= 80 else subject[:79] + "…"
        L.append(f"- `{tree_label(data)}` (ddmq package sha256 {data['tree']['package_sha256'][:12]}): {subject}; "
                 f"`{data['command']}`, {data['date']}, "
                 f"{data['reps']} repetitions, load average {data['loadavg_start']} at the start and "
                 f"{data['loadavg_end']} at the end; `benchmarks/results/{data['results_file']}`")
    L += ["", "| tree | fs | queued | consume median / p90 (ms) | publish median / p90 (ms) | "
          "consume syscalls (getdents64) | largest directory | fill µs/msg |",
          "|---|---|---:|---:|---:|---:|---|---:|"]
    for data in results:
        for fs, s in sorted(data["summary"].items(), key=lambda item: report.fs_rank(item[0])):
            for n in data["sizes"]:
                at, per = data["filesystems"][fs]["sizes"][str(n)], s["per_size"][str(n)]
                c, p, sc, big = per["consume"], per["publish"], at["consume_syscalls"], at["largest_directory"]
                L.append(f"| {tree_label(data)} | {fs} | {n:,} | {ms(c['median'])} / {ms(c['p90'])} | "
                         f"{ms(p['median'])} / {ms(p['p90'])} | {sc['total']:,} ({sc['getdents64']:,}) | "
                         f"{big['entries']:,} in `{big['directory']}` | {at['fill_us_per_msg']:.0f} |")
    L += ["", f"| tree | fs | consume at the largest ÷ at the smallest size (target ≤ {RATIO_GOAL:g}) | "
          f"publish, the same | largest directory at the largest size (target ≤ {ENTRIES_GOAL:,}) |",
          "|---|---|---:|---:|---:|"]
    for data in results:
        sizes = f"{max(data['sizes']):,} ÷ {min(data['sizes']):,}"
        for fs, s in sorted(data["summary"].items(), key=lambda item: report.fs_rank(item[0])):
            L.append(f"| {tree_label(data)} | {fs} | {s['consume_ratio']:.2f} ({s['consume_ratio_of_medians']:.2f}) "
                     f"at {sizes}: {'met' if s['consume_ratio_met'] else '**missed**'} | {s['publish_ratio']:.2f} | "
                     f"{s['largest_entries']:,}: {'met' if s['largest_entries_met'] else '**missed**'} |")
    return "\n".join(L) + "\n"


def output(text: str, write_doc: bool) -> None:
    if write_doc:
        report.write_section(HEADING, text)
    else:
        print(text)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated queue lengths (default 100,1000000); the target compares the largest "
                         "with the smallest")
    ap.add_argument("--quick", action="store_true", help="sizes 100 and 100 000")
    ap.add_argument("--reps", type=int, default=15, help="timed runs of each command at each size (default 15)")
    ap.add_argument("--fs", default="disk,tmpfs", help="comma-separated, of " + ", ".join(FILESYSTEMS)
                    + " (default disk,tmpfs; ext4-journal, a loop-mounted image, needs root)")
    ap.add_argument("--tmpfs", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    ap.add_argument("--tree", default=str(REPO), help="the ddmq checkout measured (default: this one)")
    ap.add_argument("--doc", action=argparse.BooleanOptionalAction, default=True,
                    help="write the section into docs/performance.md (default), or print it")
    ap.add_argument("--render", nargs="+", metavar="RESULTS.json",
                    help="measure nothing: redo the section from results files, side by side")
    add_cache_option(ap)
    args = ap.parse_args()
    if args.render:
        output(render([json.loads(Path(f).read_text()) for f in args.render]), args.doc)
        return
    try:
        sizes = sorted({int(n) for n in (QUICK_SIZES if args.quick else args.sizes.split(",")) if str(n).strip()})
    except ValueError:
        ap.error(f"--sizes takes whole numbers, comma-separated, not {args.sizes!r}")
    fss = [fs for fs in args.fs.split(",") if fs]
    if len(sizes) < 2 or min(sizes) < 1 or args.reps < 2 or set(fss) - set(FILESYSTEMS) or not fss:
        ap.error(f"need two sizes or more, each at least 1, --reps 2 or more, and --fs of {', '.join(FILESYSTEMS)}")
    tree = Path(args.tree).resolve()
    if not (tree / "ddmq" / "__init__.py").is_file():
        ap.error(f"--tree {tree}: not a ddmq checkout (no ddmq/__init__.py)")
    cache = enter_cache(args.cache)
    if not ensure_apt({"strace": "strace"})["strace"]:
        sys.exit("benchmarks.scale: strace is not installed (as root: apt-get install strace); it counts the "
                 "system calls of a consume")
    venv = ensure_venv(cache, "scale")
    log(f"installing {tree} into {venv}")
    installed = install_working_tree(cache, venv, tree)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    data: dict = {"kind": "scale", "command": "python3 -m benchmarks.scale " + " ".join(sys.argv[1:]),
                  "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "sizes": sizes,
                  "reps": args.reps, "tree": {"path": str(tree), **installed}, "machine": machine_info({}),
                  "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "filesystems": {}}
    bases = {"disk": cache / f"scale-queues-{os.getpid()}", "tmpfs": Path(args.tmpfs) / f"ddmq-scale-{os.getpid()}"}
    image = None
    try:
        for fs in fss:
            if fs == "ext4-journal":
                image = MillionFileExt4Image(cache)
                bases[fs] = image.mount() / "queues"
            log(f"== {fs}: {bases[fs]}")
            data["machine"]["filesystems"][fs] = fs_info(bases[fs])
            data["filesystems"][fs] = measure(bases[fs], venv, sizes, args.reps)
            shutil.rmtree(bases[fs], ignore_errors=True)
            if image is not None:
                image.remove()
                image = None
    except KeyboardInterrupt:
        log("interrupted: the queues are removed, nothing is written")
        sys.exit(130)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"benchmarks.scale: {exc}")
    finally:
        for base in bases.values():
            shutil.rmtree(base, ignore_errors=True)
        if image is not None:
            image.remove()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data.update({"elapsed_s": time.time() - started, "results_file": f"scale-{stamp}.json",
                 "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])})
    data["summary"] = summarise(data)
    report.RESULTS.mkdir(exist_ok=True)
    path = report.RESULTS / data["results_file"]
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    log(f"wrote {path} ({data['elapsed_s'] / 60:.1f} min)")
    output(render([data]), args.doc)


if __name__ == "__main__":
    main()
