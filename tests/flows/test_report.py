"""`prh report` end to end on a small real store: run selection, files, numbers; the report in a
real browser (headless Chromium); the Prefect artifact and the stored copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from flows.cli import main
from flows.report import ARTIFACT_KEY, publish_report_artifact, report_key
from storage import layout
from storage.store import Store
from tests.flows import report_store
from tests.flows.report_store import LATEST_RUN, MODELS, N, OLDER_RUN, PAIRS, TOPK

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("PRH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict]:
    url = str(tmp_path_factory.mktemp("report") / "store")
    return url, report_store.build(url)


@pytest.fixture(scope="module")
def report_dir(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-out")
    assert main(["report", "--store", store[0], "--out", str(out)]) == 0
    return out


def test_report_of_the_latest_completed_run(store, report_dir, capsys):
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert f"<code>{LATEST_RUN}</code>" in page and "data: <code>synthetic · test</code>" in page
    for row in store[1][LATEST_RUN]:
        assert f"{row['score']:.4f}" in page
        assert f"{row['score'] / (TOPK / (N - 1)):.1f}× chance" in page
    for row in store[1][OLDER_RUN]:  # the older run's alignment versions are not shown
        assert f"<td class=\"num\">{row['score']:.4f}</td>" not in page
    assert f"{TOPK / (N - 1):.4f}" in page
    figures = sorted(p.name for p in (report_dir / "figures").iterdir())
    assert "model-heatmap-mutual_knn.png" in figures and "model-heatmap-mutual_knn.svg" in figures
    assert "model-heatmap-mutual_knn-calibrated.png" in figures and "quality-mutual_knn.png" in figures and "size-mutual_knn.svg" in figures
    assert {f"layers-{a}__{b}.png" for a, b in PAIRS} <= set(figures)
    assert 'id="neighbours"' in page and "picture number" in page


def test_report_of_a_chosen_run_and_errors(store, tmp_path, capsys):
    assert main(["report", "--store", store[0], "--run", OLDER_RUN, "--out", str(tmp_path / "old"), "--pair", "vit-small:gpt-tiny"]) == 0
    page = (tmp_path / "old" / "report.html").read_text(encoding="utf-8")
    assert all(f"{row['score']:.4f}" in page for row in store[1][OLDER_RUN])
    assert re.search(r"vit-small at layer <code>layer\.1</code> and gpt-tiny at layer <code>layer\.1</code>", page)
    assert "written to" in capsys.readouterr().out
    assert main(["report", "--store", store[0], "--run", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["report", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "none does not exist: nothing was ever written there" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()  # no store: none of its folders
    assert main(["report", "--store", str(tmp_path / "empty"), "--out", str(tmp_path / "y")]) == 2
    assert "empty is not a prh store: it holds none of runs/" in capsys.readouterr().err
    (tmp_path / "no-results" / "runs").mkdir(parents=True)  # a store without a run that published results
    assert main(["report", "--store", str(tmp_path / "no-results"), "--out", str(tmp_path / "y")]) == 2
    assert "no run that published results" in capsys.readouterr().err


def test_prh_report_names_the_run_it_reported(store, tmp_path, capsys):
    """`prh report` printed only where the page went. In this store, as after a one-model zoo's
    run, the newest run published no results, so the default page is of an earlier run: the first
    line now says which run, its status and start, and that it is the latest run with results."""
    out = tmp_path / "latest"
    assert main(["report", "--store", store[0], "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"report of run {LATEST_RUN} (COMPLETED, started 2026-01-02 00:00:00 UTC; the latest run "
                            f"with results) written to {out / 'report.html'} (")
    assert main(["report", "--store", store[0], "--run", OLDER_RUN[:7], "--out", str(tmp_path / "older")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"report of run {OLDER_RUN} (COMPLETED, started 2026-01-01 00:00:00 UTC) written to ")


def test_bad_out_folders_are_one_line_errors(store, tmp_path, capsys):
    """`--out` naming a file, a path under a file, or nothing raised FileExistsError and
    NotADirectoryError tracebacks (or wrote into the working directory): one line naming it, exit 2,
    before the report is built; nothing is written."""
    plain = tmp_path / "afile"
    plain.write_text("keep me\n")
    for out, message in ((plain, f"report folder '{plain}' is a file: give a folder (--out)"),
                         (plain / "sub", f"report folder '{plain / 'sub'}' is under '{plain}', which is a file: give a folder (--out)"),
                         ("", "report folder '' is empty: give the folder to write report.html and figures/ to (--out)")):
        assert main(["report", "--store", store[0], "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"prh report: error: {message}"
    assert plain.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    inside = Path(store[0]) / "runs" / "my-report"  # the store hunt: it was written among the store's files
    before = sorted(str(p) for p in Path(store[0]).rglob("*"))
    assert main(["report", "--store", store[0], "--out", str(inside)]) == 2
    assert f"report folder '{inside}' is inside the store" in capsys.readouterr().err
    assert sorted(str(p) for p in Path(store[0]).rglob("*")) == before


def test_a_pair_the_run_does_not_have_is_an_error_listing_its_pairs(store, tmp_path, capsys):
    """`--pair A:B` of no pair of the run wrote the report with the note "no nearest-neighbour
    examples (features not available)" and exit 0: an error listing the run's pairs."""
    listed = ", ".join(f"{a}:{b}" for a, b in sorted(PAIRS))
    for pair in ("vit-small:nope", "nope:gpt-tiny", "vit-small:vit-small"):
        assert main(["report", "--store", store[0], "--run", LATEST_RUN, "--out", str(tmp_path / "r"), "--pair", pair]) == 2
        assert capsys.readouterr().err.strip() == \
            f"prh report: error: --pair {pair}: run {LATEST_RUN} has no such model pair; its pairs: {listed}"
    assert not (tmp_path / "r").exists()
    a, b = sorted(PAIRS)[0]
    assert main(["report", "--store", store[0], "--run", LATEST_RUN, "--out", str(tmp_path / "r"), "--pair", f"{b}:{a}"]) == 0
    assert f"{a} at layer" in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")  # either order names the pair


def test_a_second_report_reuses_the_stored_figures(store, report_dir, tmp_path):
    """The first report stored its figures in the store's figure cache; the next one serves them
    from there (shown by swapping one cached image) and draws nothing that did not change."""
    import io

    from PIL import Image

    from storage.figure_cache import StoreFigureCache

    cache = StoreFigureCache(Store(store[0]))
    cached = sorted(Path(Store(store[0]).path(f"reports/figures/{cache.namespace}")).glob("*.png"))
    assert len(cached) >= len(list((report_dir / "figures").glob("*.png")))
    marker = io.BytesIO()
    Image.new("RGB", (3, 2), (255, 0, 0)).save(marker, format="PNG")
    by_content = {p.read_bytes(): p for p in cached}
    swapped = by_content[(report_dir / "figures" / "model-heatmap-mutual_knn.png").read_bytes()]
    original = swapped.read_bytes()
    swapped.write_bytes(marker.getvalue())
    try:
        assert main(["report", "--store", store[0], "--out", str(tmp_path / "again")]) == 0
    finally:
        swapped.write_bytes(original)
    again = tmp_path / "again" / "figures"
    assert (again / "model-heatmap-mutual_knn.png").read_bytes() == marker.getvalue()
    for figure in (report_dir / "figures").iterdir():
        if figure.name != "model-heatmap-mutual_knn.png":
            assert (again / figure.name).read_bytes() == figure.read_bytes(), figure.name


def test_a_cached_report_imports_neither_torch_nor_matplotlib(store, report_dir, tmp_path):
    """`prh report` of a store whose figures are cached took ~3 s, 2.6 s of it imports: torch
    (~1.5 s) came in only for the metrics' directions (``tasks.metrics``), matplotlib for figures
    it then took from the cache. A fresh process, as the command starts, now imports neither (the
    directions: ``tasks.metric_facts``; matplotlib: as a figure is drawn), and writes the same page."""
    import json
    import sys

    probe = ("import json, sys\n"
             "from flows.cli import main\n"
             f"code = main(['report', '--store', {store[0]!r}, '--out', {str(tmp_path / 'fresh')!r}])\n"
             "print(json.dumps([code, sorted(m for m in ('torch', 'matplotlib', 'scipy', 'transformers', 'prefect') "
             "if m in sys.modules)]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PRH_METRIC_MODULES"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, []]
    for name in ("report.html", *(f"figures/{p.name}" for p in (report_dir / "figures").iterdir())):
        assert (tmp_path / "fresh" / name).read_bytes() == (report_dir / name).read_bytes(), name


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)")
def test_report_in_a_real_browser(report_dir, tmp_path):
    url = (report_dir / "report.html").resolve().as_uri()
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", url, tmp=tmp_path).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    assert 'data-all-images-loaded="true"' in body and loaded == total >= len(list((report_dir / "figures").glob("*.png")))
    for model in MODELS:
        assert model in dom
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    numbers = re.findall(r'<td class="num">(0\.\d{4})</td>', page)
    assert numbers and all(f">{n}<" in dom for n in numbers)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    _chromium("--virtual-time-budget=10000", "--window-size=1280,4000", f"--screenshot={shot}", url, tmp=tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000
    shutil.copy(report_dir / "report.html", ARTIFACTS / "report.html")
    print(f"screenshot: {shot}")


@pytest.mark.usefixtures("prefect_harness")
def test_publish_report_artifact_stores_the_page_and_attaches_it(store):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    url = store[0]
    record = report_store.run_record(url, LATEST_RUN)

    @flow(name="report-artifact-test")
    def attach(bad: bool = False):
        from prefect.runtime import flow_run

        return publish_report_artifact(url, {**record, "alignment_versions": ["broken"]} if bad else record), str(flow_run.get_id())

    stored, flow_run_id = attach()
    assert stored.endswith(report_key(LATEST_RUN)) and stored.startswith("file://")
    page = Store(url).read_bytes(report_key(LATEST_RUN)).decode("utf-8")
    assert all(f"{row['score']:.4f}" in page for row in store[1][LATEST_RUN])
    assert attach(bad=True)[0] is None  # a report that cannot be built does not fail the run

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    markdown = [a for a in artifacts if str(a.flow_run_id) == flow_run_id][0].data
    assert stored in markdown and "data:image/png;base64," in markdown
    top = max(store[1][LATEST_RUN], key=lambda r: r["score"])
    assert f"| mutual_knn | {TOPK / (N - 1):.4f} | {top['model_a']} × {top['model_b']} | {top['score']:.4f} |" in markdown


def test_a_rerun_shows_the_pairs_it_found_stored_as_reused(tmp_path, capsys):
    """A run that found every pair already stored (a rerun: `prh run` said "0 aligned in this run,
    4 already stored") had a page that showed those rows as its own results; the page now says
    which pairs an earlier run aligned, as the run's closing lines count them."""
    url = str(tmp_path / "store")
    report_store.build(url)
    record = report_store.run_record(url, LATEST_RUN)
    store = Store(url)
    published = max(store.manifest(key)["published_at"] for key in record["alignment_versions"])
    started = datetime.fromisoformat(published) + timedelta(minutes=5)
    store.write_json(layout.run_key("run-rerun"), {**record, "run_id": "run-rerun", "flow_run_id": "run-rerun", "aligned": 0,
                                                    "started_at": started.isoformat(), "finished_at": started.isoformat()})
    assert main(["report", "--store", url, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<code>run-rerun</code>" in page
    assert f"model pairs: <code>{len(PAIRS)}: 0 aligned in this run, {len(PAIRS)} already stored</code>" in page
    assert page.count("<td>already stored, ") == len(PAIRS) and "<td>this run</td>" not in page
    assert f"note: {len(PAIRS)} of the run's {len(PAIRS)} model pairs were already stored when it started" in capsys.readouterr().out
    # the run that aligned them shows them as its own
    assert main(["report", "--store", url, "--run", LATEST_RUN, "--out", str(tmp_path / "own")]) == 0
    own = (tmp_path / "own" / "report.html").read_text(encoding="utf-8")
    assert "already stored, " not in own and f"{len(PAIRS)} aligned in this run, 0 already stored" in own


def test_a_causal_lm_of_older_extraction_code_shows_its_pooled_bits_per_byte(tmp_path, capsys):
    """A store written before the per-caption mean existed holds a causal LM's pooled figure only
    (stored as ``bits_per_byte``; the ``models`` view moves it to ``bits_per_byte_pooled``): the
    models table left its cell empty (–) although the store has a figure. It shows that figure,
    marked as the pooled one, with a footnote saying what it is; a model of today keeps its mean."""
    url = str(tmp_path / "store")
    report_store.build(url, pooled_only={"gpt-tiny"})
    assert main(["report", "--store", url, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    models = re.search(r'<table class="models">.*?</table>(.*?)</section>', page, re.S)
    assert models is not None
    cells = {row[0]: row[-1] for row in (re.findall(r"<td[^>]*>(.*?)</td>", line)
                                         for line in re.findall(r"<tr>(.*?)</tr>", models.group(0)) if "<td" in line)}
    assert cells == {"vit-tiny": "–", "vit-small": "–", "gpt-tiny": f"{MODELS['gpt-tiny'][3]:.3f}†",
                     "gpt-small": f"{MODELS['gpt-small'][3]:.3f}"}
    assert "† pooled bits per byte" in models.group(1)
    # the quality figure still plots the per-caption means only, and the notes say why gpt-tiny is not there
    assert "gpt-tiny has only the pooled bits per byte of older extraction code" in capsys.readouterr().out


def test_artifact_text_with_a_metric_whose_scores_are_all_null():
    """A metric whose every best row has a NULL score (all its layers excluded) made max() compare
    None with floats: the artifact, built after the page was stored, raised in a finished run."""
    from types import SimpleNamespace

    import pyarrow as pa

    from flows.report import artifact_markdown

    best = pa.Table.from_pylist([
        {"metric": "mutual_knn", "model_a": "v", "model_b": "l", "score": 0.2, "chance_level": 0.01, "calibrated_score": 0.19, "p_value": 0.02},
        {"metric": "cka", "model_a": "v", "model_b": "l", "score": None, "chance_level": None, "calibrated_score": None, "p_value": None},
    ])
    report = SimpleNamespace(data=SimpleNamespace(best=best), figures=[], notes=["cka: every layer left out"])
    text = artifact_markdown(report, {"run_id": "r1"}, "file:///x/report.html")
    assert "| mutual_knn | 0.0100 | v × l | 0.2000 | 20.0× | 0.190 | 0.02 |" in text
    assert "| cka | – | – | – | – | – | – |" in text and "- cka: every layer left out" in text


def test_artifact_text_and_printed_notes_quote_store_text_inertly(store, tmp_path, capsys, monkeypatch):
    """A run record planted in a shared store put raw Markdown/HTML (a link, an <img onerror>, a
    table cell) into the Prefect artifact, and escape codes (clear screen, fake lines) onto the
    terminal through `prh report`'s notes."""
    from types import SimpleNamespace

    import pyarrow as pa

    from flows.report import artifact_markdown, run_report

    hostile = "boom\x1b[2J\x1b[1;31mFAKE: all verified <img src=x onerror=alert(1)> [click](https://evil.example) | x |"
    best = pa.Table.from_pylist([{"metric": "cka", "model_a": "v|<b>", "model_b": "[l](u)", "score": 0.5, "chance_level": None,
                                  "calibrated_score": None, "p_value": None}])
    text = artifact_markdown(SimpleNamespace(data=SimpleNamespace(best=best), figures=[], notes=[hostile]), {"run_id": "r1"}, "file:///x")
    assert "\x1b" not in text and "<img" not in text.replace("\\<img", "") and "[click](" not in text.replace("\\[click\\]\\(", "")
    assert "| cka | – | v\\|\\<b\\> × \\[l\\]\\(u\\) | 0.5000 |" in text
    fake = SimpleNamespace(figures=[], notes=[hostile], data=SimpleNamespace(run={"run_id": hostile, "status": "COMPLETED"}))
    monkeypatch.setattr("flows.report.write_report", lambda *a, **k: (tmp_path / "report.html", fake))
    assert run_report(SimpleNamespace(pair=None, out=str(tmp_path), run=None), store) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "note: boom\\x1b[2J\\x1b[1;31mFAKE" in out
    assert out.startswith("report of run boom\\x1b[2J\\x1b[1;31mFAKE")  # the run id, quoted from its record, too


def test_artifact_best_pair_of_a_lower_is_better_metric_is_the_smallest_score():
    """The artifact named the largest score the best pair of every metric; for a metric registered
    with higher_is_better=False (a distance) that is the least aligned pair."""
    import uuid
    from types import SimpleNamespace

    import pyarrow as pa

    from flows.report import artifact_markdown
    from tasks.metrics import METRICS, register_metric

    metric = f"test_report_dist_{uuid.uuid4().hex[:8]}"
    register_metric(metric, lambda x, y: float(((x - y) ** 2).sum(dim=1).mean()), bounds=(0.0, float("inf")),
                    higher_is_better=False, symmetric=True)
    try:
        rows = [{"metric": metric, "model_a": "v", "model_b": b, "score": s, "chance_level": None, "calibrated_score": c,
                 "p_value": p} for b, s, c, p in (("far", 2.5, 0.0, 0.9), ("near", 0.75, 0.4, 0.05), ("mid", 1.5, 0.1, 0.3))]
        rows += [{**r, "metric": "cka"} for r in rows]  # a built-in, higher is better: the largest
        report = SimpleNamespace(data=SimpleNamespace(best=pa.Table.from_pylist(rows)), figures=[], notes=[])
        text = artifact_markdown(report, {"run_id": "r1"}, "file:///x/report.html")
        assert f"| {metric} | – | v × near | 0.7500 | – | 0.400 | 0.05 |" in text
        assert "| cka | – | v × far | 2.5000 | – | 0.000 | 0.9 |" in text
        # the report hunt: with a chance level the artifact showed 0.4x for the best pair of a
        # lower-is-better metric, a ratio the report's table hides; it shows what the table shows
        rows = [{**r, "chance_level": 2.0, "null_mean": 1.25} for r in rows]
        report = SimpleNamespace(data=SimpleNamespace(best=pa.Table.from_pylist(rows)), figures=[], notes=[])
        text = artifact_markdown(report, {"run_id": "r1"}, "file:///x/report.html")
        assert f"| {metric} | 2.0000 | v × near | 0.7500 | – | 0.400 | 0.05 |" in text
        assert "| cka | 2.0000 | v × far | 2.5000 | 1.2× | 0.000 | 0.9 |" in text
    finally:
        METRICS._specs.pop(metric, None)


def test_the_report_notes_a_metric_module_that_does_not_import(store, monkeypatch):
    """``load_report_input`` imports ``$PRH_METRIC_MODULES`` (the directions of the user metrics);
    one that fails is a note on the page, not a failed report."""
    from tasks.report_source import load_report_input

    monkeypatch.setenv("PRH_METRIC_MODULES", "no_such_prh_report_module_xyz")
    data = load_report_input(Store(store[0]), run_id=LATEST_RUN)
    assert any(n.startswith("$PRH_METRIC_MODULES: cannot import 'no_such_prh_report_module_xyz'") for n in data.notes)
    assert data.best.num_rows == len(PAIRS)


def test_a_report_over_an_earlier_one_removes_its_figures_only(store, tmp_path, capsys):
    """`--out` holding an earlier report kept that report's figures beside the new ones (another
    run's pairs in figures/); the report's own figure names are removed, anything else is kept."""
    out = tmp_path / "out"
    assert main(["report", "--store", store[0], "--out", str(out)]) == 0
    figures = out / "figures"
    written = sorted(p.name for p in figures.iterdir())
    stale = ["layers-gone__pair.png", "size-old_metric.svg", "model-heatmap-old.png", "quality-x.png"]
    kept = ["holiday.png", "notes.txt", "layers-notes.md", "sizes.png"]
    for name in stale + kept:
        (figures / name).write_bytes(b"x")
    (figures / "layers-folder.png").mkdir()
    (figures / "layers-link.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "elsewhere.png").write_bytes(b"keep")
    assert main(["report", "--store", store[0], "--out", str(out)]) == 0
    assert sorted(p.name for p in figures.iterdir()) == sorted(written + kept + ["layers-folder.png", "layers-link.png"])
    assert (tmp_path / "elsewhere.png").read_bytes() == b"keep"


def test_a_report_of_a_copied_store_names_the_store_it_read(store, tmp_path):
    """The header named the run record's store (where the run wrote), not the copy the report
    was built from."""
    copy = tmp_path / "copy"
    shutil.copytree(Path(store[0]), copy)
    assert main(["report", "--store", str(copy), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert f"store: <code>{Store(str(copy)).display_url}</code>" in page
    assert f"run&#x27;s store: <code>{Store(store[0]).display_url}</code>" in page


def test_a_report_that_fails_to_write_leaves_the_earlier_page_whole(store, tmp_path, capsys, monkeypatch):
    """The page was written in place: a full disk (or a second report into the same folder) left
    half a page. Each file is written beside itself and renamed over; the page comes last."""
    out = tmp_path / "out"
    assert main(["report", "--store", store[0], "--out", str(out)]) == 0
    page = (out / "report.html").read_bytes()
    written: list[str] = []
    real_write = Path.write_bytes

    def write_bytes(path: Path, data: bytes) -> int:
        written.append(path.name)
        if path.name.startswith(".report.html"):
            real_write(path, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert main(["report", "--store", store[0], "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (out / "report.html").read_bytes() == page and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert written[-1].startswith(".report.html") and len(written) > 1  # the figures first, the page last


def test_a_report_that_cannot_write_a_figure_leaves_the_earlier_report_whole(store, tmp_path, capsys):
    """A folder where one of the new report's figures goes: the figures before it were already
    replaced, so the folder held the older run's page beside the newer run's figures."""
    out = tmp_path / "out"
    assert main(["report", "--store", store[0], "--run", OLDER_RUN, "--out", str(out)]) == 0
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    newer = sorted(p for p in (out / "figures").iterdir() if p.name.startswith("size-"))[-1]
    newer.unlink()
    newer.mkdir()  # in the way of the newer run's figure of that name
    del before[newer.relative_to(out).as_posix()]
    assert main(["report", "--store", store[0], "--out", str(out)]) == 2
    assert f"cannot write figures/{newer.name}: a folder figures/{newer.name} is in the way" in capsys.readouterr().err
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # every file of the earlier report as it was, no temporary left


def test_a_run_without_results_is_an_error_that_says_why(store, tmp_path, capsys):
    """``prh report --run ID`` of a run that published no alignment (it failed or was stopped
    before its grid was listed, it is still running, its zoo had no pair) wrote a page of notes
    and exited 0, as if a report had been made. It exits 2 saying the run has no results and why
    (its status and error from the run record, the pairs it had aligned when it stopped), and
    leaves the folder's earlier report as it was."""
    from storage.owner import current_owner

    url = str(tmp_path / "store")
    shutil.copytree(store[0], url)
    target = Store(url)
    keys = report_store.run_record(url, LATEST_RUN)["alignment_versions"]
    features = report_store.run_record(url, LATEST_RUN)["feature_versions"]
    when = {"started_at": "2026-02-01T00:00:00+00:00", "finished_at": "2026-02-01T01:00:00+00:00"}
    records = {
        "run-full-disk": {"status": "FAILED", "error": "OSError: [Errno 28] No space left on device",
                          "partial_alignment_versions": keys[:2], **when},
        "run-stopped": {"status": "CANCELLED", "error": "TerminationSignal: SIGTERM", **when},
        "run-one-model": {"status": "COMPLETED", "dataset_version": report_store.DATASET, "feature_versions": {"vit-tiny": features["vit-tiny"]},
                          "alignment_versions": [], **when},
        "run-live": {"status": "RUNNING", "process": current_owner(), "heartbeat_s": 30, "started_at": when["started_at"]},
        "run-legacy": {"status": "RUNNING", "started_at": "2020-01-01T00:00:00+00:00"},  # no sign of life, years old
    }
    for run_id, record in records.items():
        target.write_json(layout.run_key(run_id), {"run_id": run_id, **record})
    out = tmp_path / "out"
    assert main(["report", "--store", url, "--out", str(out)]) == 0
    page = (out / "report.html").read_bytes()
    capsys.readouterr()
    expected = {
        "run-full-disk": ["it ended FAILED: OSError: [Errno 28] No space left on device",
                          "it had aligned 2 model pair(s) before it ended"],
        "run-stopped": ["it ended CANCELLED: TerminationSignal: SIGTERM"],
        "run-one-model": ["it COMPLETED without aligning a model pair", "features of 1 model(s)"],
        "run-live": ["it is still RUNNING"],
        "run-legacy": ["it ended CRASHED: started", "never finished"],  # the runs view knows it stopped
        report_store.FAILED_RUN: ["it ended FAILED (its record gives no error)"],
    }
    for run_id, said in expected.items():
        assert main(["report", "--store", url, "--run", run_id, "--out", str(out)]) == 2, run_id
        captured = capsys.readouterr()
        assert f"prh report: error: run {run_id} has no alignment results to report: " in captured.err, captured.err
        assert all(part in captured.err for part in said), captured.err
        assert "written to" not in captured.out
    assert (out / "report.html").read_bytes() == page


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from flows.report import _write_all
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # killed once every file is written, before the renames
_write_all(Path(sys.argv[1]), [("figures/model-heatmap-x.png", b"png"), ("report.html", b"<html>")])
"""


def test_the_temporary_files_of_a_killed_report_are_removed_by_the_next_one(store, tmp_path):
    """`prh report` killed with SIGKILL while writing (here between writing its temporary files and
    renaming them) left `.report.html.tmp-<hex>` and `figures/.<figure>.tmp-<hex>` in its folder for
    good: every such kill added a page's worth. The next report into the folder removes those older
    than 5 minutes; a younger one may be another report's in flight and stays."""
    out = tmp_path / "out"
    out.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], cwd=Path(__file__).resolve().parents[2])
    assert killed.returncode == -9
    left = sorted(p for p in out.rglob("*.tmp-*"))
    assert [p.name.split(".tmp-")[0] for p in left] == [".report.html", ".model-heatmap-x.png"]
    old = time.time() - 600
    for path in left:
        os.utime(path, (old, old))
    in_flight = out / "figures" / f".size-x.png.tmp-{'0' * 32}"
    in_flight.write_bytes(b"being written")
    assert main(["report", "--store", store[0], "--out", str(out)]) == 0
    assert sorted(out.rglob("*.tmp-*")) == [in_flight]
    assert (out / "report.html").is_file()


def test_artifact_of_a_report_in_s3_says_how_to_read_it_here():
    """The artifact linked an s3:// address, which a browser does not open, and said nothing else:
    it now gives the prh report command that writes the page into a local folder (not for a local
    page, nor where a planted run id would not show as written)."""
    import shlex
    from types import SimpleNamespace

    import pyarrow as pa

    from flows.report import artifact_markdown

    best = pa.Table.from_pylist([{"metric": "cka", "model_a": "v", "model_b": "l", "score": 0.5, "chance_level": None,
                                  "calibrated_score": None, "p_value": None}])
    report = SimpleNamespace(data=SimpleNamespace(best=best), figures=[], notes=[])
    text = artifact_markdown(report, {"run_id": "4f2a"}, "s3://bucket/prh/reports/4f2a/report.html", "s3://bucket/prh")
    command = "prh report --store s3://bucket/prh --run 4f2a --out prh-report"
    assert f"```\n{command}\n```" in text
    assert shlex.split(command)[1:] == ["report", "--store", "s3://bucket/prh", "--run", "4f2a", "--out", "prh-report"]
    assert "prh report --store" not in artifact_markdown(report, {"run_id": "4f2a"}, "file:///x/report.html", "/x")
    planted = artifact_markdown(report, {"run_id": "a`b\x1b[2J"}, "s3://bucket/prh/reports/x/report.html", "s3://bucket/prh")
    assert "prh report --store" not in planted and "\x1b" not in planted
