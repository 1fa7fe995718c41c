"""`python -m benchmark.report`: bad input is one line and exit 2; regenerating gives
identical bytes and linked figures."""

import pytest

from benchmark.report.command import main
from benchmark.report.figures import FIGURES
from tests.report.builders import (
    failed_record,
    published_records,
    write,
)


@pytest.mark.parametrize("case", ["missing", "empty", "only malformed"])
def test_no_records_is_one_line_and_exit_2(tmp_path, capsys, case):
    results = tmp_path / "results"
    if case != "missing":
        results.mkdir()
    if case == "only malformed":
        (results / "result.json").write_text("[]")
    assert main([f"results_dir={results}", f"output_dir={tmp_path / 'out'}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines()
             if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(results) in lines[0]
    assert not (tmp_path / "out").exists()


def test_unknown_argument_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["results=foo"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "results_dir=DIR" in err


def test_regenerating_gives_identical_bytes_and_linked_figures(tmp_path, capsys):
    results = tmp_path / "results"
    published_records(results, seed=0)
    published_records(results, seed=1)
    write(results, failed_record("bitfit"))
    out = tmp_path / "reports"
    args = [f"results_dir={results}", f"output_dir={out}"]

    def snapshot() -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes()
                for p in sorted(out.rglob("*")) if p.suffix in (".md", ".csv", ".svg", ".tex")}

    assert main(args) == 0
    first = snapshot()
    assert main(args) == 0
    assert snapshot() == first
    assert "wrote 1 group page" in capsys.readouterr().out

    (page,) = [p for p in out.glob("*.md") if p.name != "index.md"]
    assert f"]({page.name})" in (out / "index.md").read_text()
    text = page.read_text()
    # these records predate learning curves: no such figure, a note instead
    assert not list(out.glob("*/learning_curves.*")) and "No learning curves" in text
    for name in (spec.stem for spec in FIGURES if spec.key != "curves"):
        for suffix in ("png", "svg"):
            link = f"{page.stem}/{name}.{suffix}"
            assert f"({link})" in text, link
            assert (page.parent / link).stat().st_size > 1000
    assert f"({page.stem}/summary.csv)" in text
