"""Crafted inputs found by a security hunt: each gets a clear error, nothing outside its place is
written or read."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from storage.export import export_catalog, open_catalog
from storage.keys import safe_component
from tasks.data.sources import check_json_nesting
from tasks.data.tables import load_paired_dataset
from tests.storage.catalog_store import build_catalog_store


def test_deeply_nested_json_is_refused_before_pyarrow_reads_it(tmp_path):
    """pyarrow's JSON Lines reader segfaulted (no error, exit 139) on a row nested 50,000 deep."""
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"image": "a.png", "text": "ok"}\n' + '{"image": "b.png", "text": "x", "extra": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    with pytest.raises(ValueError, match=r"deep.jsonl'?: line 2 nests JSON arrays/objects more than 512 levels deep"):
        load_paired_dataset(deep)
    for chunk in (7, 4096):  # the line's depth carried across chunk boundaries
        with pytest.raises(ValueError, match="line 2 nests"):
            check_json_nesting(deep, chunk_bytes=chunk)
    fine = tmp_path / "fine.jsonl"
    fine.write_text("".join('{"image": "a.png", "text": "[[[ brackets ]]] in a caption", "l": [[[1]]]}\n' for _ in range(2000)))
    check_json_nesting(fine, chunk_bytes=97)
    nested = tmp_path / "nest.json"
    nested.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match=r"nest.json'? nests JSON arrays/objects too deeply"):  # was a raw RecursionError
        load_paired_dataset(nested)


def test_catalog_export_refuses_a_target_inside_the_store(tmp_path):
    """`prh catalog export <a published samples.parquet>` replaced the store's file with a DuckDB
    database (the samples view then held 0 rows)."""
    store = build_catalog_store(str(tmp_path / "store"))
    target = next(Path(store.root, "datasets").rglob("samples.parquet"))
    before = target.read_bytes()
    with pytest.raises(ValueError, match="is inside the store"):
        export_catalog(store.url, target)
    assert target.read_bytes() == before


def test_open_catalog_refuses_a_file_that_names_no_store(tmp_path):
    """A crafted catalog file naming '/' as its store unlocked the whole filesystem."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("SECRET")
    path = tmp_path / "evil.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE prh_catalog AS SELECT 'file:///' AS store, '/' AS store_root, false AS remote, 'x' AS exported_at, 0 AS parquet_files")
    con.execute(f"CREATE VIEW samples AS SELECT * FROM read_text('{secret}')")
    con.close()
    with pytest.raises(ValueError, match="names '/' as its store, which is not a prh store"):
        open_catalog(path)


def test_names_with_a_final_newline_are_not_safe(tmp_path):
    """`^...$` with re.match accepted 'a\\n': a store folder literally named with a newline."""
    with pytest.raises(ValueError, match="is not a safe storage key"):
        safe_component("a\n")
    from pydantic import ValidationError

    from tasks.extract.spec import ModelSpec

    with pytest.raises(ValidationError, match="is not a safe name"):
        ModelSpec(name="a\n", loader="random_hf", id="ViTConfig", modality="vision")
    # a letter outside ASCII is refused, and the message says which letters are meant
    with pytest.raises(ValidationError, match=r"'vitü' is not a safe name: use ASCII letters \(a-z, A-Z\)"):
        ModelSpec(name="vitü", loader="random_hf", id="ViTConfig", modality="vision")


def test_report_figures_stay_in_the_report_folder(tmp_path):
    """Figure names come from the store's rows: a metric named 'x/../../../PWNED' wrote figures
    outside --out."""
    from tasks.report.build import Report
    from tasks.report.figures import RenderedFigure

    report = Report(html="<html></html>", figures=[RenderedFigure("model-heatmap-x/../../../PWNED", "t", {"png": b"p"})],
                    notes=[], data=None)  # type: ignore[arg-type]
    files = report.files()
    assert set(files) == {"report.html", "figures/model-heatmap-x_.._.._.._PWNED.png"}


def test_figure_names_reduced_alike_keep_their_own_files():
    """'a/b' and 'a_b' (metric names from a plugin or the store) both became figures/...-a_b.png:
    one figure silently replaced the other."""
    from tasks.report.build import Report
    from tasks.report.figures import RenderedFigure

    figures = [RenderedFigure(f"model-heatmap-{m}", "t", {"png": m.encode()}) for m in ("a_b", "a/b", "a b")]
    files = Report(html="", figures=figures, notes=[], data=None).files()  # type: ignore[arg-type]
    pngs = {k: v for k, v in files.items() if k.endswith(".png")}
    assert len(pngs) == 3 and sorted(pngs.values()) == [b"a b", b"a/b", b"a_b"]
    assert pngs["figures/model-heatmap-a_b.png"] == b"a_b"
    from tasks.report.build import FIGURE_FILE

    assert all(FIGURE_FILE.fullmatch(k.removeprefix("figures/")) for k in pngs)  # still removed by the stale-figure sweep
