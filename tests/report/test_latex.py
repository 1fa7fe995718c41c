"""The LaTeX (booktabs) twin of every table of a page."""

from benchmark.report.tables import PUBLISHED_PASCAL_SWIN_T
from tests.report.builders import (
    build,
    failed_record,
    published_records,
    write,
)


def _latex_rows(tex: str) -> list[str]:
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def test_each_table_has_a_booktabs_twin(tmp_path, three_seeds):
    write(tmp_path / "results", failed_record("vpt_deep"))
    build(tmp_path / "results", tmp_path / "reports")
    (tex_path,) = (tmp_path / "reports").glob("*/relative_performance.tex")
    tex = tex_path.read_text()
    unescaped = tex.replace("\\{", "").replace("\\}", "")
    assert unescaped.count("{") == unescaped.count("}")
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1, rule
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    rows = _latex_rows(tex)
    assert len(rows) == 6  # the reference, four configurations, one failed
    spec = tex.split("\\begin{tabular}{", 1)[1].split("}", 1)[0]
    header = tex.split("\\toprule\n", 1)[1].split("\n", 1)[0]
    for line in [header, *rows]:
        assert line.endswith("\\\\") and line.count(" & ") == len(spec) - 1, line
    assert "\\textbf{+2.00 $\\pm$ 2.48}" in rows[0]
    assert "full\\_ft" in tex and "**" not in tex and "±" not in tex
    # the published-numbers table has its twin too
    published_records(tmp_path / "pub")
    build(tmp_path / "pub", tmp_path / "pub_reports")
    (twin,) = (tmp_path / "pub_reports").glob("*/published_numbers.tex")
    assert len(_latex_rows(twin.read_text())) == 2 * len(PUBLISHED_PASCAL_SWIN_T["rows"])
