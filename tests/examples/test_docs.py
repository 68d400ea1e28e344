"""Every guide's code runs as written, top to bottom, as a reader would paste it.

A page's ```python blocks run in one namespace, in order (a later block uses what an earlier one
made), in a scratch folder; its ```sh blocks run there too, in bash with `set -euo pipefail`, with
the `statefmt` command on PATH. The blocks of all pages run in this process, so torch, Keras and
JAX are imported once for the module (as tests/test_readme.py runs the README's blocks, but without
a fresh interpreter per block). A comment just above a fence changes that:

    <!-- docs-test: skip -->   shown, not run (the page says why: a real bucket, a real cluster)
    <!-- docs-test: slow -->   run only with `-m slow`
    <!-- docs-test: s3 -->     run with S3_ENDPOINT and S3_BUCKET set to a fresh bucket on the moto server
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).parents[2] / "docs"
PAGES = [DOCS / "index.md", *sorted((DOCS / "guides").glob("*.md"))]
FENCE = re.compile(r"(?:^<!-- docs-test: (?P<mark>[a-z0-9]+) -->\n)?^```(?P<lang>python|sh)\n(?P<code>.*?)^```\s*$",
                   re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str, str | None, int]]:
    """(language, code, mark, line number) of each fenced block of `page`, in order."""
    text = page.read_text()
    return [(m["lang"], m["code"], m["mark"], text.count("\n", 0, m.start("code")) + 1) for m in FENCE.finditer(text)]


def run_page(page: Path, folder: Path, *, marks: set[str | None], env: dict[str, str] | None = None) -> int:
    """Run the blocks of `page` whose mark is in `marks`, in `folder`; returns how many ran."""
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}  # not importable: Ray pickles its functions
    shell_env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    saved_env = dict(os.environ)
    os.environ.update(env or {})
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for lang, code, mark, line in blocks(page):
            if mark not in marks:
                continue
            where = f"{page.relative_to(DOCS.parent)}:{line}"
            if lang == "python":
                exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
            else:
                installs = re.search(r"\b(pip|apt-get|curl|wget)\b", code)
                assert not installs, f"{where}: a block that installs or downloads must be marked skip"
                result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=folder, env=shell_env,
                                        capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, f"{where}: exit {result.returncode}\n{result.stdout[-2000:]}" \
                                               f"\n{result.stderr[-2000:]}"
            ran += 1
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_page_runs(page, tmp_path):
    ran = run_page(page, tmp_path, marks={None})
    assert ran >= 1, f"{page.name}: no block ran"


def test_pages_with_s3_blocks_run_against_the_s3_server(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    pages = [page for page in PAGES if any(mark == "s3" for _, _, mark, _ in blocks(page))]
    assert pages, "the fleet guide shows the store on S3"
    env = {"S3_ENDPOINT": server.endpoint, "S3_BUCKET": bucket, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for page in pages:
        assert run_page(page, tmp_path, marks={None, "s3"}, env=env) > 0


@pytest.mark.slow
def test_slow_blocks_run(tmp_path):
    pages = [page for page in PAGES if any(mark == "slow" for _, _, mark, _ in blocks(page))]
    for page in pages:
        folder = tmp_path / page.stem
        folder.mkdir()
        run_page(page, folder, marks={None, "slow"})


def test_every_guide_is_tested_and_linked_from_the_landing_page():
    guides = sorted((DOCS / "guides").glob("*.md"))
    assert len(guides) >= 7
    landing = (DOCS / "index.md").read_text()
    for guide in guides:
        assert f"guides/{guide.name}" in landing, f"index.md does not link {guide.name}"
        runnable = [b for b in blocks(guide) if b[2] in (None, "s3")]
        assert runnable, f"{guide.name} has no code the tests run"


# --- statefmt inspect --plot ------------------------------------------------------------------------------------------

def _fleet(streams: int = 64, diverging: int | None = None, dead: tuple[int, ...] = ()):
    import numpy as np

    from statefmt import LayerState, StateSet

    rng = np.random.default_rng(7)
    c = rng.normal(size=(1, streams, 16)).astype("float32")
    if diverging is not None:
        c[0, diverging] *= 100.0
    h = np.tanh(c)
    h[0, :, list(dead)] = 0.0
    gru = np.tanh(rng.normal(size=(2, streams, 8))).astype("float32")
    return StateSet([LayerState("encoder", "lstm", h=h, c=c), LayerState("decoder", "gru", h=gru)],
                    stream_ids=[f"pump-{i}" for i in range(streams)])


def test_inspect_plot_writes_a_valid_png_and_names_what_stands_out(tmp_path):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner
    from PIL import Image

    import statefmt
    from statefmt.cli import main

    statefmt.save(_fleet(diverging=41, dead=(3,)), tmp_path / "fleet.statefmt")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "fleet.statefmt"), "--plot", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "f.png") as image:
        image.verify()
    with Image.open(tmp_path / "f.png") as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 400
    assert "stream 'pump-41' reaches |c|" in result.output
    assert "1 dead unit(s), zero in every stream: 3" in result.output

    statefmt.save(statefmt.WeightSet([statefmt.LayerWeights(
        "l0", "rnn", W=np.zeros((1, 4, 3), "float32"), R=np.zeros((1, 4, 4), "float32"),
        Wb=np.zeros((1, 4), "float32"), Rb=np.zeros((1, 4), "float32"))]), tmp_path / "w.statefmt")
    refused = CliRunner().invoke(main, ["inspect", str(tmp_path / "w.statefmt"), "--plot", str(tmp_path / "w.png")])
    assert refused.exit_code == 1 and "shows a state" in refused.output and "Traceback" not in refused.output


def test_a_diverging_stream_shows_in_the_heatmap_and_in_the_findings(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    from statefmt.plot import _summarize, findings, plot_state

    assert findings(_fleet()) == []  # a healthy fleet: nothing to say
    fleet = _fleet(streams=1000, diverging=617)
    notes = plot_state(fleet, tmp_path / "big.png", max_rows=50)
    assert [note for note in notes if "'pump-617'" in note and "|c|" in note]
    with Image.open(tmp_path / "big.png") as image:
        image.verify()
    # what the |c| heatmap shows: 1,000 streams max-pooled into 50 rows of 20; the diverging one's row stands out
    grid = _summarize(fleet[0]["c"], 50, 400).grid
    assert grid.shape == (50, 16)
    brightest = grid.max(axis=1)
    assert int(brightest.argmax()) == 617 // 20
    assert brightest.max() > 20 * np.median(brightest)


def test_plot_findings_keep_float64_and_name_dead_units_of_c(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np

    from statefmt import LayerState, StateSet
    from statefmt.plot import findings

    h = np.full((1, 3, 4), 1e300)  # finite in float64, inf once cast to float32
    assert findings(StateSet([LayerState("big", "gru", h=h)])) == []
    c = np.ones((1, 3, 4), np.float32)
    c[0, :, 2] = 0.0
    notes = findings(StateSet([LayerState("l", "lstm", h=np.ones((1, 3, 4), np.float32), c=c)]))
    assert notes == ["layer 0 'l': c: 1 dead unit(s), zero in every stream: 2"]


def test_plot_of_many_layers_is_bounded_and_warning_free(tmp_path):
    pytest.importorskip("matplotlib")
    import time
    import warnings

    import numpy as np

    from statefmt import LayerState, StateSet
    from statefmt.plot import MAX_LAYERS, plot_state

    states = StateSet([LayerState(f"l{i}", "gru", h=np.ones((1, 1, 2), np.float32)) for i in range(100)])
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notes = plot_state(states, tmp_path / "many")  # no extension: PNG at that very path
    assert time.monotonic() - started < 90  # 100 rows took minutes and GiBs; MAX_LAYERS rows take seconds
    assert notes == [f"only the first {MAX_LAYERS} of 100 layers are drawn"]
    assert (tmp_path / "many").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "many.png").exists()


def test_inspect_plot_says_where_the_picture_went(tmp_path):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    import statefmt
    from statefmt.cli import main

    statefmt.save(_fleet(streams=8), tmp_path / "f.statefmt")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "f.statefmt"), "--plot", str(tmp_path / "f.svg")])
    assert result.exit_code == 0 and f"plot: written to {tmp_path / 'f.svg'}" in result.stderr
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_plot_refuses_weights_with_a_state_error(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np

    from statefmt import LayerWeights, StateError, WeightSet
    from statefmt.plot import plot_state

    weights = WeightSet([LayerWeights("l0", "rnn", W=np.zeros((1, 4, 3), "float32"), R=np.zeros((1, 4, 4), "float32"),
                                      Wb=np.zeros((1, 4), "float32"), Rb=np.zeros((1, 4), "float32"))])
    with pytest.raises(StateError, match="shows a state"):
        plot_state(weights, tmp_path / "w.png")


# --- benchmarks/plots.py ----------------------------------------------------------------------------------------------

def test_benchmark_plots_draw_from_results_and_skip_what_is_missing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import json

    from PIL import Image

    from benchmarks import plots

    results, images = tmp_path / "results", tmp_path / "images"
    results.mkdir()
    monkeypatch.setattr(plots, "RESULTS", results)
    monkeypatch.setattr(plots, "IMAGES", images)
    monkeypatch.setattr(plots, "REPO", tmp_path)
    assert plots.main() == 0
    assert "file.json is missing" in capsys.readouterr().out and not images.exists()

    (results / "file.json").write_text(json.dumps({"measured": "2026-01-01 00:00 UTC", "machine": "test",
                                                   "one_stream_by_id_seconds": {"1000": 4e-4, "1000000": 5e-4}}))
    rows = [{"key": key, "seconds": seconds} for key, seconds in
            (("get1", 1.4e-3), ("raw_get1", 1e-3), ("redis_get1", 5e-5), ("scale_get1_10000", 1.6e-3))]
    (results / "store.json").write_text(json.dumps({"date": "2026-01-01T00:00", "machine": "test", "streams": 100000,
                                                    "rows": rows}))
    assert plots.main() == 0
    for name in ("bench-one-stream.png", "bench-store-vs-peers.png"):
        with Image.open(images / name) as image:
            image.verify()
    assert not (images / "bench-file-vs-peers.png").exists()  # file.json holds no saves or loads


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    """What `make docs` checks (CI runs it): a broken link, anchor or API reference fails the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    root = Path(__file__).parents[2]
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=root, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "guides" / "format" / "index.html").exists()
    assert (tmp_path / "site" / "spec" / "index.html").exists()


def test_site_width_no_code_block_scrolls_sideways_at_1280_px():
    """The built site (`make docs`) in headless Chromium: every page's code fits its column."""
    import site_width

    site = Path(__file__).parents[2] / "site"
    if site_width.chromium() is None or not (site / "index.html").exists():
        pytest.skip("needs chromium (apt-get install -y chromium) and a built site (make docs)")
    wide = {str(page.relative_to(site)): found for page in site_width.pages(site)
            if (found := site_width.overflowing(page, site_width.chromium()))[0]}
    assert wide == {}
