"""The documentation and the committed asv history: links resolve, pages are listed, results parse.

* Every relative link in ``README.md`` and ``docs/*.md`` points to a file of the repository
  (the pages ``docs/index.md`` lists included), and ``docs/index.md`` lists every page.
* The README is a front page: short, with the exact install and test commands CI runs.
* ``benchmarks/results/`` (asv's ``results_dir``) holds a history a fresh clone can publish:
  ``benchmarks.json``, a machine folder per CPU with a complete ``machine.json``, and
  ``TimeAccel`` and ``Throughput`` results for at least five commits of the project.
* ``benchmarks.history`` names machines by CPU and never mixes two CPUs under one name.
* Every page reads as a page: a size a reader can read, valid UTF-8 without control
  characters, one title, headings that do not skip a level, balanced code fences, tables with
  a header and a separator row and the same number of cells in every row, and no line
  repeated over and over (a page corrupted by a bad edit fails here, not in a reader's hands).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import history  # noqa: E402

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [ROOT / "README.md", *PAGES]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REQUIRED = ("bench_accel.TimeAccel.time_accel", "bench_accel.Throughput.track_")
MACHINE_FIELDS = ("arch", "cpu", "machine", "num_cpu", "os", "ram")
MIN_COMMITS = 5


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # code is not a link
    return LINK.findall(text)


def _relative(target: str) -> str | None:
    """The file part of a link to this repository, or None for a web link or an anchor."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return None
    return target.split("#", 1)[0]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_of_the_repository(path):
    missing = []
    for target in _links(path):
        file_part = _relative(target)
        if file_part is None:
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_docs_index_lists_every_page():
    listed = {_relative(t) for t in _links(DOCS / "index.md")}
    unlisted = [p.name for p in PAGES if p.name != "index.md" and p.name not in listed]
    assert not unlisted, f"docs/index.md does not list {unlisted}"


def test_readme_links_the_docs_index():
    assert "docs/index.md" in _links(ROOT / "README.md")


def test_readme_is_a_front_page_with_the_ci_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('pip install -e ".[all]"', "python -m pytest"):
        assert command in ci, f".ci/run no longer runs {command!r}: update this test"
        assert command in text, f"README.md does not show {command!r}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_stand_alone(path):
    text = path.read_text()
    for phrase in ("DESIGN.md", "the issue", "design note"):
        assert phrase not in text, f"{path.relative_to(ROOT)} mentions {phrase!r}"


# --- every page renders as Markdown: what a reader would notice -----------------------------

MAX_PAGE_BYTES = 64_000  # the longest page is about 20 KB; a page past this is not read
MIN_PAGE_BYTES = 300
MAX_REPEATS = 8  # the same non-blank line this often is a corruption, not prose
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+\S")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks (the fences themselves left out)."""
    lines, inside = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append((number, line))
    return lines


def _cells(row: str) -> int:
    body = re.sub(r"`[^`]*`", "code", row.strip())  # a | inside inline code is no cell border
    body = body.replace("\\|", "")
    return len(body.strip("|").split("|"))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_has_a_readable_size_and_clean_text(path):
    raw = path.read_bytes()
    name = path.relative_to(ROOT)
    assert MIN_PAGE_BYTES <= len(raw) <= MAX_PAGE_BYTES, f"{name}: {len(raw)} bytes"
    text = raw.decode("utf-8")  # raises on invalid UTF-8
    bad = sorted({hex(ord(c)) for c in text if ord(c) < 32 and c not in "\n\t"})
    assert not bad, f"{name}: control characters {bad}"
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.strip() and not re.fullmatch(r"[\s|:\-`~]*", line):  # table rules, fences
            counts[line] = counts.get(line, 0) + 1
    worst = max(counts.items(), key=lambda kv: kv[1], default=("", 0))
    assert worst[1] <= MAX_REPEATS, f"{name}: a line repeated {worst[1]} times: {worst[0]!r}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_renders_as_markdown_with_its_headings(path):
    name = path.relative_to(ROOT)
    text = path.read_text(encoding="utf-8")
    fences = sum(1 for line in text.splitlines() if FENCE.match(line))
    assert fences % 2 == 0, f"{name}: an unclosed code fence"
    prose = _prose_lines(path)
    headings = [(n, len(m.group(1))) for n, line in prose if (m := HEADING.match(line))]
    assert headings and headings[0][1] == 1, f"{name}: does not open with a '# ' title"
    assert prose[0][1].startswith("# "), f"{name}: the first line is not its '# ' title"
    assert sum(1 for _, level in headings if level == 1) == 1, f"{name}: more than one title"
    for (_, before), (number, level) in itertools.pairwise(headings):
        assert level <= before + 1, f"{name}:{number}: heading skips from h{before} to h{level}"
    # tables: a header row, a separator row, then rows of the same width
    rows = [(n, line) for n, line in prose if line.lstrip().startswith("|")]
    blocks: list[list[tuple[int, str]]] = []
    for n, line in rows:
        if blocks and blocks[-1][-1][0] == n - 1:
            blocks[-1].append((n, line))
        else:
            blocks.append([(n, line)])
    for block in blocks:
        first = block[0][0]
        assert len(block) >= 2 and re.fullmatch(r"\s*\|?[\s|:\-]+\|?\s*", block[1][1]), (
            f"{name}:{first}: a table without a header and separator row (a blank line inside "
            "a table splits it)"
        )
        width = _cells(block[0][1])
        for n, line in block:
            assert _cells(line) == width, f"{name}:{n}: {_cells(line)} cells, header has {width}"


# --- the committed asv history -------------------------------------------------------------


def _results_dir() -> Path:
    return history.results_dir(ROOT)


def _machines() -> dict[str, dict]:
    return history.known_machines(_results_dir())


def _result_files(machine: str) -> list[dict]:
    folder = _results_dir() / machine
    return [
        json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "machine.json"
    ]


def _published_commits(machine: str, name: str, suite: dict) -> set[str]:
    """Commits whose result for ``name`` asv publish would draw: a value at a parameter
    combination that ``benchmarks.json`` (the suite publish reads) still lists."""
    wanted = {tuple(c) for c in itertools.product(*suite[name]["params"])}
    commits = set()
    for result in _result_files(machine):
        columns = result["result_columns"]
        row = result["results"].get(name)
        if not row:
            continue
        values, params = row[columns.index("result")], row[columns.index("params")]
        if values is None:
            continue
        combos = list(itertools.product(*params)) if params else [()]
        if any(v is not None and c in wanted for v, c in zip(values, combos, strict=True)):
            commits.add(result["commit_hash"])
    return commits


def _suite() -> dict:
    return json.loads((_results_dir() / "benchmarks.json").read_text())


def _required(suite: dict) -> list[str]:
    return [name for name in suite if name.startswith(REQUIRED)]


def test_results_are_tracked_outside_the_ignored_asv_folder():
    folder = _results_dir()
    assert folder.relative_to(ROOT).parts[0] != ".asv"
    assert not (folder / "__init__.py").exists()  # never a package asv's discovery imports
    assert (folder / "benchmarks.json").is_file()
    suite = _suite()
    for prefix in REQUIRED:
        assert any(name.startswith(prefix) for name in suite), prefix


def test_every_machine_with_results_is_complete_and_named_after_its_folder():
    machines = {name: info for name, info in _machines().items() if _result_files(name)}
    assert machines, "no machine with results under the results folder"
    for name, info in machines.items():
        assert info.get("machine") == name
        for field in MACHINE_FIELDS:
            assert info.get(field), f"{name}/machine.json has no {field!r}"


def test_a_machine_keeps_one_cpu_and_publish_shows_its_history():
    suite = _suite()
    best = 0
    for name, info in _machines().items():
        for result in _result_files(name):
            params = result["params"]
            for field in MACHINE_FIELDS:  # a drifting field would split the machine's graphs
                assert str(params.get(field)) == str(info[field]), (name, field)
        shown = [_published_commits(name, bench, suite) for bench in _required(suite)]
        if shown:
            best = max(best, len(set.intersection(*shown)))
    assert best >= MIN_COMMITS, (
        f"asv publish would show TimeAccel and Throughput for only {best} commits; if an "
        "`asv run` with other sizes (NBODY_BENCH_TINY) rewrote benchmarks/results/"
        "benchmarks.json, restore it: git checkout benchmarks/results/benchmarks.json"
    )


def test_recorded_commits_belong_to_the_history():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in _machines():
        for result in _result_files(name):
            commit = result["commit_hash"]
            found = subprocess.run(
                ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True
            )
            assert found.returncode == 0, f"{name}: commit {commit[:8]} is not in this repository"


# --- benchmarks.history: one machine name per CPU -----------------------------------------


def _record_machine(folder: Path, name: str, cpu: str, num_cpu: int = 2) -> None:
    (folder / name).mkdir(parents=True)
    info = {"machine": name, "cpu": cpu, "num_cpu": str(num_cpu), "version": 1}
    (folder / name / "machine.json").write_text(json.dumps(info))


def test_history_reuses_the_machine_with_this_cpu(tmp_path):
    _record_machine(tmp_path, "dev-a", "CPU A (family 6 model 106, AVX-512)")
    _record_machine(tmp_path, "dev-b", "CPU B (family 25 model 1, AVX2)")
    assert history.pick_machine(None, tmp_path, "CPU B (family 25 model 1, AVX2)", 2) == "dev-b"


def test_history_asks_for_a_name_on_a_new_cpu(tmp_path):
    _record_machine(tmp_path, "dev-a", "CPU A")
    with pytest.raises(SystemExit, match="--machine NEW-NAME"):
        history.pick_machine(None, tmp_path, "CPU C", 2)
    with pytest.raises(SystemExit, match="--machine NEW-NAME"):
        history.pick_machine(None, tmp_path, "CPU A", 4)  # other core count: other machine
    assert history.pick_machine("dev-c", tmp_path, "CPU C", 2) == "dev-c"


def test_history_refuses_to_mix_two_cpus_under_one_name(tmp_path):
    _record_machine(tmp_path, "dev-a", "CPU A")
    with pytest.raises(SystemExit, match="another CPU"):
        history.pick_machine("dev-a", tmp_path, "CPU C", 2)


def test_history_writes_every_machine_field_and_keeps_a_recorded_one(tmp_path):
    path = tmp_path / "asv-machine.json"
    entry = history.register_machine("dev-x", "CPU X", 2, path=path)
    assert sorted(entry) == sorted(MACHINE_FIELDS)
    recorded = {**entry, "os": "Linux", "ram": "123", "version": 1}
    kept = history.register_machine("dev-x", "CPU X", 2, recorded=recorded, path=path)
    assert kept["ram"] == "123"
    assert json.loads(path.read_text())["dev-x"] == kept


def test_history_refuses_python_same():
    with pytest.raises(SystemExit):
        history.main(["record", "--", "--python=same"])


def test_cpu_description_names_the_cpu():
    assert history.cpu_description().strip()


def test_asv_parameters_are_the_checkouts_registry():
    # The asv suite reads backend names from the registry's source (so that an older installed
    # commit cannot shift them); here the checkout is the installed package, so they agree.
    import backends
    from benchmarks import _common

    assert _common.registered() == backends.names()


def test_scratch_config_keeps_smoke_runs_out_of_the_tracked_results(tmp_path):
    (tmp_path / "asv.conf.json").write_text((ROOT / "asv.conf.json").read_text())
    path = history.scratch_config(tmp_path)
    conf = json.loads(path.read_text())
    assert path.parent == tmp_path / ".asv"  # git-ignored
    for key in ("repo", "benchmark_dir", "env_dir", "results_dir", "html_dir"):
        assert Path(conf[key]).is_absolute(), key  # asv resolves from the config's folder
    assert Path(conf["results_dir"]).parent == tmp_path / ".asv"
    assert conf["benchmark_dir"] == str(tmp_path / "benchmarks")
