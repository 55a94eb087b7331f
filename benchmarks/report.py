"""The report: medians, paired ratios and targets from the records of a run, as JSON and Markdown.

Reads only what the workloads recorded (and the machine description), so a
results file can be rendered again without measuring (``--render``). Writes
``benchmarks/results/{quick,full}-TIMESTAMP.json`` and, when asked,
docs/performance.md above its hand-written analysis.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.provision import AMQP_PORT, EXT4_IMAGE_GIB, FILESYSTEMS, OPTIONAL_FILESYSTEMS, REPO, SSHFS_OPTIONS, log
from benchmarks.workloads import DIRQ_EPERM, OPCOST_OPS, capped_n, median

RESULTS = Path(__file__).resolve().parent / "results"
DOC = REPO / "docs" / "performance.md"
ALL_FILESYSTEMS = FILESYSTEMS + OPTIONAL_FILESYSTEMS
ANALYSIS_MARK = "<!-- Everything below this line is written by hand and kept by benchmarks/run.py. -->"


def summarise(runs: list[dict], prof: dict) -> dict:
    """Medians per (workload, fs, label, n), paired ratios, and the targets."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("workload") in ("w1", "w2", "w3") and "label" in r:
            groups.setdefault((r["workload"], r["fs"], r["label"], r["n"]), []).append(r)
    table = []
    for (wl, fs, label, n), rs in sorted(groups.items()):
        ok = [r for r in rs if r.get("total_s")]
        table.append({
            "workload": wl, "fs": fs, "label": label, "n": n, "runs": len(rs),
            "median_total_s": median([r["total_s"] for r in ok]),
            "median_us_per_msg": median([r["total_s"] / r["n"] * 1e6 for r in ok]),
            "median_cpu_us_per_msg": median([r["cpu_s"] / r["n"] * 1e6 for r in ok if r.get("cpu_s")]),
            "median_server_cpu_us_per_msg": median(
                [r["server_cpu_s"] / r["n"] * 1e6 for r in ok if r.get("server_cpu_s") is not None]),
            "min_us_per_msg": min([r["total_s"] / r["n"] * 1e6 for r in ok], default=None),
            "max_us_per_msg": max([r["total_s"] / r["n"] * 1e6 for r in ok], default=None),
            "all_ok": all(r.get("ok") for r in rs),
            "capped": any(r.get("capped") for r in rs),
            "missing": sum(r.get("missing", 0) or 0 for r in rs),
            "duplicates": sum(r.get("duplicates", 0) or 0 for r in rs),
            "errors": sorted({r["error"] for r in rs if r.get("error")}),
        })
    return {"table": table}


def paired_ratio(runs, wl, fs, num_label, den_label, n=None, den_wl=None, num_n=None, den_n=None):
    """Median over repetitions of (per-message time of num) / (per-message time of den), same rep."""
    def per_rep(wl_, label, n_):
        out = {}
        for r in runs:
            if (r.get("workload") == wl_ and r.get("fs") == fs and r.get("label") == label and r.get("total_s")
                    and (n_ is None or r["n"] == n_)):
                out.setdefault(r.get("rep"), []).append(r["total_s"] / r["n"])
        return {k: statistics.median(v) for k, v in out.items()}
    a = per_rep(wl, num_label, num_n or n)
    b = per_rep(den_wl or wl, den_label, den_n or n)
    ratios = [a[k] / b[k] for k in a if k in b]
    if not ratios:
        ma, mb = median(list(a.values())), median(list(b.values()))
        return (ma / mb if ma and mb else None), []
    return statistics.median(ratios), ratios


def cell(rows, wl, fs, label, n=None, key="median_us_per_msg"):
    for row in rows:
        if row["workload"] == wl and row["fs"] == fs and row["label"] == label and (n is None or row["n"] == n):
            return row
    return None


def targets(data: dict) -> list[dict]:
    runs, rows, p = data["runs"], data["summary"]["table"], data["profile"]
    out = []

    def add(name, fs, value, goal, met, detail=""):
        out.append({"target": name, "fs": fs, "value": value, "goal": goal, "met": met, "detail": detail})

    for fs in [f for f in ALL_FILESYSTEMS if any(r.get("fs") == f for r in runs)]:
        n = n_for_fs(p, fs, "ddmq durable:false")
        # W1 durable:false vs 0.9.14 (old runs are bracketed by ddmq runs with rep "oldK")
        r, rs = paired_ratio(runs, "w1", fs, "ddmq 0.9.14", "ddmq durable:false", n=n)
        old = cell(rows, "w1", fs, "ddmq 0.9.14", n)
        capped = bool(old and old["capped"])
        if r is not None:
            add("W1 durable:false ≥ 50× faster than ddmq 0.9.14", fs, r, 50, r >= 50,
                ("0.9.14 stopped at its time cap: ratio is a lower bound" if capped else ""))
        for peer, goal, name in (("RabbitMQ persistent+confirms", 5, "W1 durable:false ≥ 5× faster than RabbitMQ"),
                                 ("RabbitMQ transient", 5,
                                  "W1 durable:false ≥ 5× faster than RabbitMQ (transient, for reference)"),
                                 ("dirq", 1, "W1 durable:false faster than dirq")):
            r, rs = paired_ratio(runs, "w1", fs, peer, "ddmq durable:false",
                                 num_n=n_for_fs(p, fs, peer), den_n=n)
            if r is not None:
                add(name, fs, r, goal, r >= goal if goal > 1 else r > 1)
        r, rs = paired_ratio(runs, "w1", fs, "ddmq durable:false", "floor", n=n)
        if r is not None:
            add("W1 durable:false within 2× of the floor", fs, r, 2, r <= 2)
        r, rs = paired_ratio(runs, "w1", fs, "ddmq durable:false", "floor + read", n=n)
        if r is not None:
            add("W1 durable:false within 2× of the floor + read (the payload read every consumer does)",
                fs, r, 2, r <= 2)
        dn = n_for_fs(p, fs, "ddmq durable:true")
        r, rs = paired_ratio(runs, "w1", fs, "RabbitMQ persistent+confirms", "ddmq durable:true", n=dn)
        if r is not None:
            add("W1 durable:true faster than RabbitMQ persistent+confirms", fs, r, 1, r > 1)
        # W2 flatness: per-message cost at the largest size vs at 5000, same round.
        big = max(p["w2_sizes"])
        r, rs = paired_ratio(runs, "w2", fs, "ddmq durable:false", "ddmq durable:false",
                             num_n=big, den_n=p["w1_n"])
        if r is not None and big != p["w1_n"]:
            add(f"W2 per-message cost at {big} within 1.3× of {p['w1_n']}", fs, r, 1.3, r <= 1.3)
        # W3
        w3 = cell(rows, "w3", fs, "ddmq durable:false")
        if w3:
            r, rs = paired_ratio(runs, "w3", fs, "ddmq durable:false", "ddmq durable:false (W3 twin)",
                                 den_wl="w1")
            rs_w3 = [x for x in runs if x.get("workload") == "w3" and x.get("fs") == fs
                     and x.get("label", "").startswith("ddmq")]
            clean = all(x.get("ok") for x in rs_w3)
            add("W3 no loss / no double delivery (ddmq, all runs)", fs, clean, True, clean,
                f"{len(rs_w3)} runs, missing {sum(x.get('missing', 0) for x in rs_w3)}, "
                f"duplicates {sum(x.get('duplicates', 0) for x in rs_w3)}")
            if r is not None:
                add("W3 wall time no worse than W1 (durable:false, same n)", fs, r, 1, r <= 1)
        for peer in ("dirq", DIRQ_EPERM) if fs in SSHFS_OPTIONS else ():
            r, rs = paired_ratio(runs, "w3", fs, peer, "ddmq durable:false")
            failed = [x for x in runs if x.get("workload") == "w3" and x.get("fs") == fs and x.get("label") == peer
                      and not x.get("ok")]
            ours_ok = all(x.get("ok") for x in runs if x.get("workload") == "w3" and x.get("fs") == fs
                          and x.get("label") == "ddmq durable:false")
            if r is not None or failed:  # a peer that completed no run delivered nothing: ddmq is ahead
                add(f"Cross-mount throughput ≥ {peer}'s (W3: publisher on mount A, consumers on A and B)", fs, r,
                    1, r >= 1 if r is not None else ours_ok, f"{len(rs)} paired runs"
                    + (f"; {peer} failed {len(failed)} runs: {failed[0].get('error', 'not exactly once')[:200]}"
                       if failed else ""))
    # W4
    for r in runs:
        if r.get("workload") != "w4":
            continue
        base = median(r["times"]["python -c pass"])
        for cmd in ("ddmq-notify", "ddmq publish"):
            v = median(r["times"][cmd]) / base
            add(f"W4 {cmd} ≤ 3× `python -c pass`", r["fs"], v, 3, v <= 3)
    # W5
    lat = {}
    for r in runs:
        if r.get("workload") == "w5-latency":
            lat.setdefault((r["fs"], r["interval"]), []).append(r.get("publish_to_exit_s"))
    for (fs, interval), xs in lat.items():
        worst = max((x for x in xs if x is not None), default=None)
        goal = interval + 0.05
        add(f"W5 ddmq-wait returns within interval + 50 ms (interval {interval:g} s, worst of {len(xs)})", fs,
            worst, goal, worst is not None and worst <= goal and all(x is not None for x in xs),
            f"median {median(xs) * 1e3:.0f} ms" if median(xs) else "")
    st = {r["backlog"]: r for r in runs if r.get("workload") == "w5-strace"}
    if len(st) == 2 and st[0]["polls"] and st[max(st)]["polls"]:
        a, b = st[0], st[max(st)]

        def per_poll(r, skip=()):
            return sum(v for k, v in r["fs_by_call"].items() if k not in skip) / r["polls"]
        pa, pb = per_poll(a), per_poll(b)
        qa, qb = per_poll(a, ("getdents64", "getdents")), per_poll(b, ("getdents64", "getdents"))
        ra = sum(a["fs_by_call"].get(k, 0) for k in ("read", "pread64")) / a["polls"]
        rb = sum(b["fs_by_call"].get(k, 0) for k in ("read", "pread64")) / b["polls"]
        add(f"W5 idle waiter: fs syscalls per poll other than reading the directory, {max(st)} "
            "non-matching messages vs empty", "disk", qb / qa if qa else None, 1.0, qb <= qa * 1.1,
            f"{qb:.1f} vs {qa:.1f}; file reads per poll {rb:.1f} vs {ra:.1f}")
        add(f"W5 idle waiter: all fs syscalls per poll (getdents64 included), {max(st)} vs empty", "disk",
            pb / pa, 1.0, pb <= pa * 1.1,
            f"{pb:.1f} vs {pa:.1f}; getdents64 per poll {b['fs_by_call'].get('getdents64', 0) / b['polls']:.1f} "
            f"vs {a['fs_by_call'].get('getdents64', 0) / a['polls']:.1f}")
        if a.get("cpu_s") is not None and b.get("cpu_s") is not None:
            ca, cb = a["cpu_s"] / a["polls"] * 1e3, b["cpu_s"] / b["polls"] * 1e3
            add(f"W5 idle waiter: CPU per poll, {max(st)} vs empty (informational)", "disk",
                cb / ca if ca else None, 1.0, cb <= max(ca, 0.1) * 1.5, f"{cb:.2f} ms vs {ca:.2f} ms per poll")
    return out


def fs_rank(fs: str) -> int:
    return ALL_FILESYSTEMS.index(fs) if fs in ALL_FILESYSTEMS else len(ALL_FILESYSTEMS)


def n_for_fs(p: dict, fs: str, label: str) -> int:
    durable = "durable:true" in label or "persistent" in label or label == "floor durable"
    return capped_n(p, fs, durable, p["w1_n"])


def fmt_us(x):
    if x is None:
        return "–"
    return f"{x / 1000:,.2f} ms" if x >= 10000 else f"{x:,.0f} µs" if x >= 100 else f"{x:.1f} µs"


def render(data: dict) -> str:
    m, p, rows = data["machine"], data["profile"], data["summary"]["table"]
    fsd = m["filesystems"]
    L = []
    L.append("# Performance\n")
    L.append(f"Generated by `python3 -m benchmarks.run{' --quick' if data['mode'] == 'quick' else ''}` "
             f"on {data['date']} ({data['elapsed_s'] / 60:.1f} min). Raw results: "
             f"`benchmarks/results/{data['results_file']}`. ddmq measured: the working tree at "
             f"`{data['versions']['ddmq']['describe']}`"
             + (" plus uncommitted changes" if data["versions"]["ddmq"]["uncommitted_changes_in_package"] else "")
             + ".\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {m['cpu']}, {m['cores']} cores ({m['hypervisor']} guest), {m['memory_gib']} GiB memory")
    L.append(f"- Kernel: Linux {m['kernel']}; Python {m['python']}")
    for k, v in sorted(fsd.items(), key=lambda kv: fs_rank(kv[0])):
        journal = {True: ", with a journal", False: ", **without a journal**"}.get(v.get("journal"), "")
        L.append(f"- {k}: `{v['path']}` on {v['fstype']}{journal} ({v['device']}, mounted `{v['mount']}`, "
                 f"options `{v['options']}`)")
    L.append(f"- Load average at start / end: {' '.join(m['loadavg_start'])} / {' '.join(data['loadavg_end'])} "
             "(other work was running on the machine when the load is above ~1)")
    v = data["versions"]
    L.append(f"- Peers: ddmq {v['old']} (PyPI), dirq {v['dirq']} (PyPI, `QueueSimple`), {v['rabbitmq']}, "
             f"pika {v['pika']}\n")

    L.append("## Results\n")
    L.append("Per-message wall time (publish + consume + ack, median of the runs; lower is better), "
             "with the client CPU time per message. Ratios in the targets table are medians of the ratios "
             "within each repetition (implementations take turns, so both sides of a ratio ran under the "
             "same conditions).\n")
    for wl, title in (("w1", f"W1: one process publishes {p['w1_n']} messages, then consumes and acks them all"),
                      ("w2", "W2: the same at larger sizes (per-message cost should stay flat)"),
                      ("w3", f"W3: one publisher and 4 consumer processes at once, {p['w3_n']} messages")):
        sel = [r for r in rows if r["workload"] == wl]
        if not sel:
            continue
        L.append(f"### {title}\n")
        L.append("| implementation | fs | n | runs | per message | min – max | client CPU / msg | "
                 "server CPU / msg | every message once |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in sorted(sel, key=lambda r: (fs_rank(r["fs"]), r["n"], r["median_us_per_msg"] or 1e18)):
            once = "yes" if r["all_ok"] else ("cut at time cap" if r["capped"] else
                                               f"**no** (missing {r['missing']}, dup {r['duplicates']})"
                                               + (f" {r['errors']}" if r["errors"] else ""))
            L.append(f"| {r['label']} | {r['fs']} | {r['n']:,} | {r['runs']} | "
                     f"{'> ' if r['capped'] else ''}{fmt_us(r['median_us_per_msg'])} | "
                     f"{fmt_us(r['min_us_per_msg'])} – {fmt_us(r['max_us_per_msg'])} | "
                     f"{fmt_us(r['median_cpu_us_per_msg'])} | {fmt_us(r['median_server_cpu_us_per_msg'])} | {once} |")
        L.append("")
    L.extend(render_shared(data))
    sc = [r for r in data["runs"] if r.get("workload") == "w1-syscalls"]
    if sc:
        L.append(f"### W1 system calls per message (strace -c -f, {sc[0]['n']} messages minus 0, {sc[0]['fs']})\n")
        L.append("Counted, not timed, so independent of the machine's load.\n")
        L.append("| implementation | all syscalls / msg | filesystem syscalls / msg | largest |")
        L.append("|---|---:|---:|---|")
        for r in sorted(sc, key=lambda r: r["total_per_msg"]):
            top = ", ".join(f"{k} {v:g}" for k, v in sorted(r["per_msg"].items(), key=lambda kv: -kv[1])[:8])
            L.append(f"| {r['label']} | {r['total_per_msg']:g} | {r['fs_per_msg']:g} | {top} |")
        L.append("")
    L.extend(render_opcosts(data.get("opcosts") or {}))
    capped = [r for r in data["runs"] if r.get("capped")]
    if capped:
        L.append("Runs of ddmq 0.9.14 stopped at their time cap (its consume lists the whole queue for every "
                 "message, so a run grows with the square of its size):\n")
        for r in capped:
            L.append(f"- {r['fs']}, n={r['n']:,}: published all in {r['publish_s']:.1f} s "
                     f"({r['publish_s'] / r['n'] * 1e3:.2f} ms each), then consumed {r['consumed_before_cap']:,} "
                     f"in {r['consume_s']:.1f} s ({r['consume_s'] / max(1, r['consumed_before_cap']) * 1e3:.1f} ms "
                     "each) before the cap")
        L.append("")

    w4 = [r for r in data["runs"] if r.get("workload") == "w4"]
    if w4:
        L.append("### W4: command line, wall time per invocation (median, commands alternating)\n")
        names = list(w4[0]["times"])
        L.append("| command | " + " | ".join(r["fs"] for r in w4) + " | × `python -c pass` |")
        L.append("|---|" + "---:|" * len(w4) + "---:|")
        for name in names:
            meds = [median(r["times"][name]) for r in w4]
            base = median(w4[0]["times"]["python -c pass"])
            L.append(f"| `{name}` | " + " | ".join(f"{x * 1e3:.1f} ms" for x in meds)
                     + f" | {meds[0] / base:.2f} |")
        hf = [r for r in data["runs"] if r.get("workload") == "w4-hyperfine"]
        for r in hf:
            L.append("")
            L.append(f"hyperfine cross-check ({r['fs']}): " + "; ".join(
                f"`{x['command'].split('/')[-1]}` {x['median_s'] * 1e3:.1f} ms" for x in r["results"]))
        old = [r for r in data["runs"] if r.get("workload") == "w4-old-cli"]
        for r in old:
            L.append("")
            L.append(f"ddmq 0.9.14's own command line does not start as packaged: `ddmq --help` exits "
                     f"{r['returncode']} with `{r['stderr_last_line']}` (its `cli.py` does `from broker import "
                     "broker`, a Python 2 implicit relative import), so it has no W4 numbers.")
        L.append("")

    lat = [r for r in data["runs"] if r.get("workload") == "w5-latency"]
    st = [r for r in data["runs"] if r.get("workload") == "w5-strace"]
    if lat or st:
        L.append("### W5: waiting\n")
    if lat:
        L.append("Latency from the moment `ddmq-notify` published (the `published` time in the message) to "
                 "`ddmq-wait` exiting, with a fixed poll interval (`--interval I --max-interval I`):\n")
        L.append("| fs | interval | samples | median | max | publish → claim (median / max) | "
                 "claim → exit (median / max) | `ddmq-notify` run time (median) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        keys = sorted({(r["fs"], r["interval"]) for r in lat})

        def ms(xs, f):
            xs = [x for x in xs if x is not None]
            return f"{f(xs) * 1e3:.0f}" if xs else "–"
        for fs, iv in keys:
            sel = [r for r in lat if r["fs"] == fs and r["interval"] == iv]
            xs = [r.get("publish_to_exit_s") for r in sel]
            pc = [r.get("publish_to_claim_s") for r in sel]
            ce = [r.get("claim_to_exit_s") for r in sel]
            nr = [r.get("notify_run_s") for r in sel]
            L.append(f"| {fs} | {iv * 1e3:.0f} ms | {len(xs)} | {ms(xs, median)} ms | {ms(xs, max)} ms | "
                     f"{ms(pc, median)} / {ms(pc, max)} ms | {ms(ce, median)} / {ms(ce, max)} ms | "
                     f"{ms(nr, median)} ms |")
        L.append("")
    if st:
        L.append("System calls of an idle `ddmq-wait --match never --interval 0.5 --max-interval 0.5`, counted "
                 "with `strace -c -f -p PID` after its first polls:\n")
        L.append("| non-matching messages | seconds | polls | fs syscalls | per poll | per minute | "
                 "getdents64 per poll | CPU per minute |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in st:
            pp = r["fs_syscalls"] / r["polls"] if r["polls"] else 0
            L.append(f"| {r['backlog']:,} | {r['seconds']:g} | {r['polls']} | {r['fs_syscalls']} | {pp:.1f} | "
                     f"{r['fs_syscalls'] / r['seconds'] * 60:.0f} | "
                     f"{r['fs_by_call'].get('getdents64', 0) / max(1, r['polls']):.1f} | "
                     f"{(r['cpu_s'] or 0) / r['seconds'] * 60:.2f} s |")
        L.append("")
        L.append("By call (" + "; ".join(
            f"{r['backlog']:,} messages: " + ", ".join(f"{k} {v}" for k, v in sorted(
                r["fs_by_call"].items(), key=lambda kv: -kv[1])) for r in st) + ").\n")

    L.append("## Targets\n")
    L.append("| target | fs | measured | goal | |")
    L.append("|---|---|---:|---:|---|")
    for t in data["targets"]:
        val = t["value"]
        if val is None:
            shown, goal = "–", "–"
        elif isinstance(val, bool):
            shown, goal = ("yes" if val else "no"), "yes"
        elif "W5 ddmq-wait" in t["target"]:
            shown, goal = f"{val * 1e3:.0f} ms", f"≤ {t['goal'] * 1e3:.0f} ms"
        elif "within" in t["target"] or "no worse" in t["target"] or "per poll" in t["target"] or "≤" in t["target"]:
            shown, goal = f"{val:.2f}×", f"≤ {t['goal']:g}×"
        else:
            shown, goal = f"{val:.2f}×", (f"≥ {t['goal']:g}×" if t["goal"] > 1 or "≥" in t["target"] else "> 1×")
        status = "info" if "informational" in t["target"] else "met" if t["met"] else "**missed**"
        L.append(f"| {t['target']} | {t['fs']} | {shown} | {goal} | {status}"
                 + (f" ({t['detail']})" if t["detail"] else "") + " |")
    L.append("")
    L.append("For the speed targets, the measured value is how many times longer the other side takes per "
             "message (for “within 2× of the floor” and W2/W3, ddmq's time over the reference's).\n")
    L.append(METHOD.format(**p, amqp=AMQP_PORT, ext4_gib=EXT4_IMAGE_GIB))
    if any(r.get("fs") in SSHFS_OPTIONS for r in data["runs"]):
        L.append(METHOD_SHARED.format(**p))
    if data["notes"]:
        L.append("Notes from this run:\n")
        L.extend(f"- {n}" for n in data["notes"])
        L.append("")
    return "\n".join(L)


def render_shared(data: dict) -> list[str]:
    """The cross-mount table: throughput, latency and who consumed what, on each filesystem shared by two mounts."""
    runs = [r for r in data["runs"] if r.get("fs") in SSHFS_OPTIONS and r.get("workload") in ("w1", "w3")]
    if not runs:
        return []
    L = ["### Across two sshfs mounts: throughput\n",
         "One directory exported by a private sshd and mounted twice with sshfs (two SFTP sessions, each with "
         "its own client caches: two nodes; `tests/harness/mount-shared.sh`). W1 publishes through mount A, "
         "then consumes and acks everything through mount B. W3's publisher is on A, two of its four consumers "
         "on A and two on B. Throughput is messages per second (n over the wall time from the first publish "
         "to the last ack, median of the runs); latency is from a publish returning to its message being "
         "consumed, pooled over the runs as the median of each run's median (p90, max: the largest of the "
         "runs'); “on B” is the share of W3's messages that B's consumers took.\n",
         "| implementation | fs | W1 msgs/s | W3 msgs/s | W3 latency median / p90 / max | W3 on B | "
         "every message once |",
         "|---|---|---:|---:|---:|---:|---|"]
    keys = sorted({(r["fs"], r["label"]) for r in runs}, key=lambda k: (fs_rank(k[0]), k[1]))
    for fs, label in keys:
        def sel(wl, fs=fs, label=label):
            return [r for r in runs if r["workload"] == wl and r["fs"] == fs and r["label"] == label]

        def rate(rs):
            per = median([r["total_s"] / r["n"] for r in rs if r.get("total_s")])
            return f"{1 / per:,.0f}" if per else "–"
        w1, w3 = sel("w1"), sel("w3")
        lat = [r["latency_s"] for r in w3 if r.get("latency_s", {}).get("median") is not None]
        latency = (f"{median([x['median'] for x in lat]) * 1e3:.0f} / {max(x['p90'] for x in lat) * 1e3:.0f} / "
                   f"{max(x['max'] for x in lat) * 1e3:.0f} ms") if lat else "–"
        on_b = [r["consumed_b"] / r["n"] for r in w3 if r.get("consumed_b") is not None]
        bad = [r for r in w1 + w3 if not r.get("ok")]
        once = "yes" if not bad else f"**no**, {len(bad)} failed (" + (
            bad[0].get("error") or f"missing {bad[0].get('missing')}, dup {bad[0].get('duplicates')}") + ")"
        L.append(f"| {label} | {fs} | {rate(w1)} | {rate(w3)} | {latency} | "
                 f"{f'{median(on_b):.0%}' if on_b else '–'} | {once} ({len(w1) + len(w3)} runs) |")
    L.append("")
    trips = [r for r in data["runs"] if r.get("workload") == "shared-round-trips"]
    if trips:
        L.append(f"Round trips per message of W1 across the mounts ({trips[0]['n']} messages minus 0): the "
                 "requests both sshfs processes read from the kernel (FUSE) and the SFTP requests they sent the "
                 "server, each a round trip, counted with strace on the sshfs processes, so independent of the "
                 "machine's load; and the client's own filesystem system calls (strace -c -f).\n")
        L.append("| implementation | fs | SFTP requests / msg | FUSE requests / msg | client fs syscalls / msg | "
                 "SFTP requests by type |")
        L.append("|---|---|---:|---:|---:|---|")
        for r in sorted(trips, key=lambda r: (fs_rank(r["fs"]), r["sftp_requests_per_msg"])):
            kinds = ", ".join(f"{k} {v:g}" for k, v in r.get("sftp_by_type_per_msg", {}).items())
            L.append(f"| {r['label']} | {r['fs']} | {r['sftp_requests_per_msg']:g} | {r['fuse_requests_per_msg']:g} "
                     f"| {r['client_fs_syscalls_per_msg']:g} | {kinds} |" if r["ok"] else
                     f"| {r['label']} | {r['fs']} | failed | | | |")
        L.append("")
    return L


def render_opcosts(oc: dict) -> list[str]:
    """The "Filesystem operation costs" table (results files from before it have no "opcosts")."""
    cols = [(fs, i, d) for fs in ALL_FILESYSTEMS if fs in oc for i, d in enumerate(oc[fs].get("dirs", []), 1)]
    if not cols:
        return []
    first = oc[cols[0][0]]
    L = ["### Filesystem operation costs\n",
         "Time per call of each system call the floors make, alone, to show which system call dominates "
         "each filesystem's floor. Measured by the suite in its own process before that filesystem's "
         f"workloads: {first['n']:,} files, each operation timed as one loop over all of them, median of "
         f"{first['rounds']} rounds (`os.sync()` before each), in two freshly made directories per filesystem "
         "because on an ext4 without a journal the cost of a create depends on how many inodes were freed "
         "in the last minutes in the block group of its directory. The CPU rows are for the create loop: a create well above its CPU time is waiting "
         "(journal, disk, locks), not computing.\n",
         "| µs per call | " + " | ".join(f"{fs} dir {i}" for fs, i, _ in cols) + " |",
         "|---|" + "---:|" * len(cols)]

    def row(name, f):
        vals = []
        for _fs, _i, d in cols:
            try:
                v = f(d)
            except (KeyError, TypeError):
                v = None
            vals.append("–" if v is None else f"{v:,.1f}")
        L.append(f"| {name.replace('|', chr(92) + '|')} | " + " | ".join(vals) + " |")
    for key, name in OPCOST_OPS:
        row(name, lambda d, key=key: d["us"][key])
    row("create: CPU time (user + system, `time.process_time`)", lambda d: d["create_cpu_us"])
    row("create: system CPU time (`getrusage`)", lambda d: d["create_sys_us"])
    def floor(d):
        return sum(d["us"][k] for k in ("create", "write", "close", "unlink")) + 2 * d["us"]["rename"]

    row("sum of the floor's calls: create + write + close + 2 × rename + unlink", floor)
    row("sum of floor + read's calls: the above + read", lambda d: floor(d) + d["us"]["read"])
    L.append("")
    return L


METHOD = """## Method

One command, `python3 -m benchmarks.run` (`--quick` for a smaller run), installs
everything and runs every workload; nothing here is part of the test suite.

- **Environments.** Each implementation runs in its own virtual environment
  under the cache directory (default `~/.cache/ddmq-bench`), created from the
  same interpreter: ddmq from this working tree (a copy installed
  non-editable, reinstalled every run), `ddmq==0.9.14` (with `pyyaml<6`,
  which it needs), `dirq`, and `pika` for RabbitMQ. RabbitMQ is Debian's
  `rabbitmq-server`, started by the suite with its own node name, ports
  ({amqp} and up), epmd, data and log directories (on the filesystem being
  measured), and stopped at the end of each filesystem's phase.
- **Measurement.** Every measurement is a fresh process
  (`benchmarks/worker.py`) on a fresh queue directory; timing starts after
  the queue exists and ends when the last message is acked, and the bodies
  received are checked against those sent (each exactly once). Within each
  repetition the implementations take turns, in a rotating order; tables
  show medians and ratios are medians of per-repetition ratios.
  `os.sync()` runs before each measurement so no run pays for the previous
  one's writeback.
- **Filesystems.** Everything runs on the local disk as it is mounted (the
  cache directory), on *ext4-journal*, a {ext4_gib} GiB ext4 image made with
  `mkfs.ext4`'s defaults (so with a journal) and loop-mounted from the
  cache directory for the run, and on tmpfs (`/dev/shm`). The image is there
  because the local disk of a machine can be formatted in a way few others
  are (see the filesystem lines above and the analysis); every
  implementation runs on all three. Outside tmpfs, runs whose cost is an
  fsync per message (ddmq durable:true, the durable floor, RabbitMQ
  persistent+confirms) use {disk_durable_n} messages instead of {w1_n}:
  they are compared per message.
- **Implementations.** *ddmq*: `Broker.publish`, then `consume()` + `ack()`
  one message at a time, `durable` set on the queue. *ddmq 0.9.14*:
  `broker.publish` / `consume` / `ack` with its defaults (which clean the
  queue, rewriting its settings file, on every call); it is quadratic, so
  it runs {old_reps} time(s) per filesystem, each run bracketed by two ddmq
  runs, with a time cap ({old_cap:g} s at W1, {old_w2_cap:g} s at W2).
  *dirq*: `QueueSimple.add`, then iterate, `lock`, `get`, `remove`; it never
  fsyncs, so it is compared with durable:false. *RabbitMQ
  persistent+confirms*: durable queue, `delivery_mode=2`, publisher confirms
  (`basic_publish` returns once the broker confirmed), `basic_consume` with
  prefetch 100 and one manual `basic_ack` per message. *RabbitMQ
  transient*: the same with a transient queue and messages and no confirms,
  for reference. *Floor*: a Python loop doing only the system calls of one
  publish (`open(O_CREAT|O_EXCL)`, `write`, `close`, `rename`), one claim
  (`rename`) and one ack (`unlink`) per message; *floor durable* adds the
  two fsyncs ddmq durable:true does (file, then directory). *Floor + read*
  is the floor plus reading the claimed message before the ack: `open`
  (`O_RDONLY`), `read(65536)` until it returns nothing, `close`, and the
  bytes compared with the body. Every consumer reads the message it claimed
  (ddmq, dirq and RabbitMQ all deliver the body), so this is the floor a
  real queue is compared against; the plain floor is kept as first defined.
  Floor + read runs with durable off only (it has no durable variant).
- **W2** repeats W1 for ddmq (durable:false) at {w1_n} and {w2_sizes}
  messages, and the floor at the smallest and largest size, in one round,
  so the flatness ratio is side by side; dirq and RabbitMQ transient run at
  {w2_peer_sizes} on tmpfs, and ddmq 0.9.14 once at {old_w2_n} on tmpfs,
  stopped at its cap.
- **W3** forks one publisher and 4 consumers after the queue exists; all
  start at a barrier, consumers poll (sleeping 1 ms when they find nothing)
  until the shared count of acked messages reaches n. Each W3 ddmq
  durable:false run is paired with a W1 run of the same size in the same
  round.
- **W4** runs each command {w4_reps} times, commands shuffled in every round,
  timing `subprocess.run` from the same Python (a cross-check with
  `hyperfine -N` is listed when hyperfine is installed). `ddmq consume`
  finds a message every time; `ddmq-notify` creates nothing after its first
  call.
- **W5** latency: `ddmq-wait --match go --interval I --max-interval I`,
  then after a random delay `ddmq-notify ev go`; latency is from the
  message's `published` time to the waiter's exit ({w5_samples} samples per
  interval). System calls: `strace -c -f -p` attached to an idle waiter for
  {w5_strace_s:g} s after its first polls, with an empty queue and with
  {w5_backlog} non-matching messages; polls are counted as its sleeps
  (`clock_nanosleep`).
"""


METHOD_SHARED = """\
- **Shared storage.** *sshfs*: one directory exported by a private sshd on
  127.0.0.1 and mounted twice with sshfs (`tests/harness/mount-shared.sh`:
  two SFTP sessions, each with its own client caches, as two nodes of a
  cluster), with sshfs's default caching; *sshfs-nocache* (`--fs
  sshfs-nocache`) the same with `dir_cache=no,entry_timeout=0,
  attr_timeout=0,negative_timeout=0`. Only W1 and W3 run there, with
  {shared_n} messages, {shared_reps} repetitions, against the floor + read
  and dirq: W1 publishes through mount A and consumes through mount B; W3's
  publisher is on A and its consumers alternate between A and B. dirq's
  lock takes EPERM, which SFTP returns for a lost race, for an error and
  dies, so W3 also runs *dirq, EPERM as lost race*, dirq with that read as
  the lost race it is. Round trips: W1 at n messages and at 0 while
  strace counts the requests each sshfs process reads from the kernel and
  the SFTP requests it writes to the server.
"""


def save(data: dict, write_doc: bool) -> Path:
    """Summarise a run's records, write its results file, and print or write the Markdown; returns the file."""
    data["summary"] = summarise(data["runs"], data["profile"])
    data["targets"] = targets(data)
    RESULTS.mkdir(exist_ok=True)
    results = RESULTS / data["results_file"]
    results.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    output(data, write_doc)
    return results


def output(data: dict, write_doc: bool) -> None:
    text = render(data)
    if write_doc:
        kept = ""
        if DOC.exists() and ANALYSIS_MARK in DOC.read_text():
            kept = DOC.read_text().split(ANALYSIS_MARK, 1)[1]
        DOC.write_text(text + "\n" + ANALYSIS_MARK + (kept or "\n\n## Analysis\n\n(none yet)\n"))
        log(f"wrote {DOC}")
    else:
        print(text)


def write_section(heading: str, text: str) -> None:
    """Put ``text`` into docs/performance.md as the section headed ``heading`` (a whole Markdown line).

    It replaces the section of that heading, up to the next heading of the
    same or a higher level, or else goes at the end: below the analysis
    mark, which ``benchmarks.run`` keeps when it regenerates the part above.
    So a benchmark of its own (``benchmarks.scale``) can rewrite its section
    on every run without touching anyone else's.
    """
    level = len(heading) - len(heading.lstrip("#"))
    lines = DOC.read_text().splitlines()
    start = end = len(lines)
    fenced = False
    for i, line in enumerate(lines):
        fenced ^= line.startswith("```")
        if fenced or not line.startswith("#"):
            continue
        if line == heading and start == len(lines):
            start = i
        elif i > start and len(line) - len(line.lstrip("#")) <= level:
            end = i
            break
    new = text.rstrip("\n").splitlines() + [""]
    if start == len(lines):
        new = [""] + new if lines and lines[-1] else new
    DOC.write_text("\n".join(lines[:start] + new + lines[end:]).rstrip("\n") + "\n")
    log(f"wrote {heading.lstrip('# ')} into {DOC}")


def rerender(path: Path, write_doc: bool | None) -> None:
    data = json.loads(path.read_text())
    data["summary"] = summarise(data["runs"], data["profile"])
    data["targets"] = targets(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    output(data, bool(write_doc))
