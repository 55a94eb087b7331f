"""The documentation, executed: so that it cannot drift from the code.

- README.md's Python API example runs as written, against a fresh root.
- docs/protocol.md's table of file names is held to ``ddmq/layout.py``: each
  row's example is read back by the layout's parsers (or recognised as one of
  its private names), each name the layout builds has the row's shape, every
  name-building function of the layout has a row, and the dead-letter reasons,
  the queue directory's entries and the queue-name rule the document states
  are the layout's.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ddmq import Broker, InvalidQueueName, layout

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
PROTOCOL = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown text, up to the next one."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


# ------------------------------------------------------------ README.md


def test_readme_python_api_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a fresh interpreter, as a reader pasting it would: the example
    takes its root from DDMQ_ROOT, publishes, consumes and acks."""
    blocks = code_blocks(section(README, "Python API"), "python")
    assert blocks, "README.md's Python API section has no ```python example"
    code = "\n".join(blocks)
    root = tmp_path / "root"
    monkeypatch.setenv("DDMQ_ROOT", str(root))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"README.md's example failed:\n{code}\n{proc.stderr}"
    assert proc.stdout == "Hello World!\n"
    assert Broker(root).counts("queue_name") == {"ready": 0, "work": 0, "dead": 0}  # it was acked


# ------------------------------------------------------------ docs/protocol.md: file names

FILE_NAMES = section(PROTOCOL, "File names")


class Row:
    """One row of the file-name table: where the name lives, its shape, an example, its builder."""

    def __init__(self, line: str):
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"a file-name row has 5 cells: {line!r}"
        self.where, self.shape, self.what, self.example, self.built_by = cells
        self.is_dir = self.shape.endswith("/")

    def __repr__(self) -> str:
        return f"{self.where} {self.shape}"


def _rows() -> list[Row]:
    lines = [line for line in FILE_NAMES.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| where | name |") and set(lines[1]) <= set("|-"), "table header changed"
    return [Row(line) for line in lines[2:]]


ROWS = _rows()


def _documented_reasons() -> list[str]:
    m = re.search(r"`REASON` — one of (.*?); `ORIGINAL-NAME`", FILE_NAMES, re.S)
    assert m, "the REASON bullet of 'File names' changed its wording"
    return re.findall(r"`([a-z-]+)`", re.sub(r"\([^()]*\)", "", m.group(1)))  # not what the (asides) quote


def _documented_queue_name() -> str:
    m = re.search(r"Queue names match\s+`([^`]+)`", section(PROTOCOL, "Layout"))
    assert m, "the queue-name rule of 'Layout' changed its wording"
    return m.group(1)


# What each placeholder of a documented shape stands for, as the bullets under
# the table define it. A run of one letter is a fixed-width field: P, T, E, D
# decimal digits, X hex digits; the run's length is the width.
PLACEHOLDERS = {
    "ID": r"[0-9a-f]{32}",
    "R": r"[0-9]+",
    "TOKEN": r"[0-9a-f]{12}",
    "REASON": "(?:" + "|".join(map(re.escape, _documented_reasons())) + ")",
    "ORIGINAL-NAME": r"[^/]{1,160}",
    "QUEUE": _documented_queue_name(),
    "KEY": r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,199}",
    "SS": r"[0-9a-f]{2}",
    # the dead name's first 40 characters: 20 + 1 + 6 + 1 of time and random, 12 of the rest
    "DEADNAME-PREFIX": r"[0-9]{20}\.[0-9a-f]{6}\.[^/]{1,12}",
}
RUNS = {"P": "[0-9]", "T": "[0-9]", "E": "[0-9]", "D": "[0-9]", "B": "[0-9]", "S": "[0-9]", "X": "[0-9a-f]"}


def shape_pattern(shape: str) -> str:
    """A documented shape (``PPPPPP.ID.R.msg``) as a regular expression. Literal
    parts are lower case and punctuation; placeholders are upper case."""
    parts = []
    for i, part in enumerate(re.split(r"([A-Z][A-Z-]*[A-Z]|[A-Z])", shape.rstrip("/"))):
        if i % 2 == 0:
            parts.append(re.escape(part))
        elif part == "DEADNAME":
            parts.append(shape_pattern(next(r.shape for r in ROWS if r.built_by == "dead_name")))
        elif part in PLACEHOLDERS:
            parts.append(PLACEHOLDERS[part])
        elif len(set(part)) == 1 and part[0] in RUNS:
            parts.append(f"{RUNS[part[0]]}{{{len(part)}}}")
        else:
            pytest.fail(f"docs/protocol.md: placeholder {part!r} in {shape!r} is not defined under the table")
    return "".join(parts)


def read_back(row: Row, name: str) -> None:
    """Assert that the layout reads ``name`` as what ``row`` says it is."""
    where = row.where
    if where == "ready/" and row.built_by == "ready_probe_name":
        assert layout.abandoned_in_ready(name) == (True, False), f"housekeeping would not recognise ready/{name}"
    elif where == "ready/ERA/BAND/SLOT/":
        parsed = layout.parse_ready(name)
        assert parsed is not None and str(parsed) == name
    elif where.startswith("ready/"):  # a directory of ready/'s tree, at the depth of its place
        assert layout.is_shard(where.count("/") - 1, name), f"the walk would not recognise {where}{name}"
    elif where == "work/":
        work = layout.parse_work(name)
        assert work is not None and str(work) == name
        ready = layout.ReadyName(work.priority, work.published, work.id, work.requeues)
        assert layout.claimed_name(str(ready), work.expires, work.token) == name  # a claim appends the lease
    elif where == "dead/":
        # No parser reads a dead name back: what ddmq tells from one is only
        # whether it is a dead letter or the .reason file beside one.
        assert name.endswith(layout.REASON_SUFFIX) == (row.built_by == "REASON_SUFFIX")
    elif where == "jobs/":
        assert layout.is_job_shard(name), f"housekeeping would not recognise the shard jobs/{name}"
    elif where == "jobs/SS/":
        assert layout.parse_job_end(name) is not None and layout.job_end_name(layout.parse_job_end(name)) == name
    elif where == "tmp/":
        assert layout.abandoned_in_tmp(name), f"housekeeping would not recognise tmp/{name}"
    elif where == "root":
        assert layout.abandoned_in_root(name) == (True, row.is_dir), f"housekeeping would not recognise {name}"
    else:
        pytest.fail(f"docs/protocol.md: unknown place {where!r}")


def _work_name() -> str:
    ready = layout.ready_name(999, time.time_ns(), layout.new_message_id(), 3)
    return layout.claimed_name(ready, time.time_ns() + 600 * 10**9, layout.new_token())


# How to build a name of each row with the layout's own functions.
BUILDERS: dict[str, Callable[[], str]] = {
    "ready_name": lambda: layout.ready_name(layout.MAX_PRIORITY, time.time_ns(), layout.new_message_id()),
    "claimed_name": _work_name,
    "dead_name": lambda: layout.dead_name("requeue-limit", _work_name(), time.time_ns()),
    "REASON_SUFFIX": lambda: layout.dead_name("foreign", "x" * 300, time.time_ns()) + layout.REASON_SUFFIX,
    "publish_tmp_name": lambda: layout.publish_tmp_name(layout.new_message_id()),
    "reason_tmp_name": lambda: layout.reason_tmp_name(layout.dead_name("corrupt", _work_name(), time.time_ns())),
    "stamp_tmp_name": layout.stamp_tmp_name,
    "clock_probe_name": layout.clock_probe_name,
    "staging_name": lambda: layout.staging_name("q" * layout.MAX_QUEUE_NAME),
    "doomed_name": lambda: layout.doomed_name("jobs.v2"),
    "marker_tmp_name": layout.marker_tmp_name,
    "settings_tmp_name": layout.settings_tmp_name,
    "ready_probe_name": layout.ready_probe_name,
    "era_name": lambda: layout.era_name(layout.MAX_PRIORITY, time.time_ns()),
    "band_name": lambda: layout.band_name(time.time_ns()),
    "slot_name": lambda: layout.slot_name(time.time_ns()),
    "job_end_name": lambda: layout.job_end_name(layout.job_key("linux", "1234_7")),
    "job_shard": lambda: layout.job_shard(layout.job_key("linux", layout.new_token())),
}


def test_every_name_the_layout_builds_has_a_row() -> None:
    builders = {name for name in vars(layout) if name.endswith("_name") and not name.startswith("_")}
    builders.discard("check_queue_name")  # checks a name, builds none
    documented = {row.built_by for row in ROWS}
    assert builders <= documented, f"docs/protocol.md's file-name table lacks a row for {builders - documented}"
    assert documented <= set(BUILDERS), f"tests/test_docs.py: no builder for {documented - set(BUILDERS)}"


@pytest.mark.parametrize("row", ROWS, ids=repr)
def test_example_has_its_shape_and_reads_back(row: Row) -> None:
    assert re.fullmatch(shape_pattern(row.shape), row.example.rstrip("/")), \
        f"example {row.example!r} does not have the shape {row.shape!r}"
    assert row.example.endswith("/") == row.is_dir
    read_back(row, row.example.rstrip("/"))


@pytest.mark.parametrize("row", ROWS, ids=repr)
def test_built_name_has_the_documented_shape(row: Row) -> None:
    for _ in range(3):  # the random parts differ each time
        name = BUILDERS[row.built_by]()
        assert re.fullmatch(shape_pattern(row.shape), name), \
            f"layout.{row.built_by} built {name!r}, which is not {row.shape!r} as docs/protocol.md says"
        read_back(row, name)


def test_the_shard_example_is_the_shard_of_the_record_example() -> None:
    shard = next(r.example for r in ROWS if r.built_by == "job_shard")
    record = next(r.example for r in ROWS if r.built_by == "job_end_name")
    assert layout.job_shard(layout.parse_job_end(record) or "") + "/" == shard


def test_documented_reasons_are_the_layouts() -> None:
    assert tuple(_documented_reasons()) == layout.DEAD_REASONS


def test_digits_are_ascii_only() -> None:
    ready = next(r.example for r in ROWS if r.built_by == "ready_name")
    assert layout.parse_ready(ready) is not None
    assert layout.parse_ready("\N{ARABIC-INDIC DIGIT ZERO}" + ready[1:]) is None


@pytest.mark.parametrize("name", [
    "jobs", "done_q", "v1.2-beta", "-x", "_", "q" * 128, "q" * 129, ".hidden", "..", "a/b", "", "ddmq.yaml",
    "caf\N{LATIN SMALL LETTER E WITH ACUTE}", "x\n",
])
def test_queue_names_are_what_the_layout_section_says(name: str) -> None:
    documented = bool(re.fullmatch(_documented_queue_name(), name)) and name != layout.ROOT_MARKER
    try:
        layout.check_queue_name(name)
    except InvalidQueueName:
        accepted = False
    else:
        accepted = True
    assert accepted == documented


def test_layout_block_lists_a_queues_entries() -> None:
    """The tree under '## Layout': the root marker, and exactly the entries a queue directory may hold."""
    (tree,) = code_blocks(section(PROTOCOL, "Layout"), "")
    root_entries = {m[1] for m in re.finditer(r"^  (\S+)", tree, re.M)}
    queue_entries = {m[1].rstrip("/") for m in re.finditer(r"^    (\S+)", tree, re.M)}
    assert layout.ROOT_MARKER in root_entries
    assert queue_entries == layout.QUEUE_ENTRIES
