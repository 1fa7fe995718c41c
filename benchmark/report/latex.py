"""LaTeX twins of the report's markdown tables: booktabs tables ready for a paper.

A table is given as the same header and cell text as its markdown version (markdown bold
and escapes, the report's symbols); cells are escaped for LaTeX and the symbols written as
LaTeX commands, so the file compiles with `\\usepackage{booktabs}` and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from benchmark.report.groups import Group
from benchmark.report.tables import PUBLISHED_PASCAL_SWIN_T, published_cells, relative_cells

# the report's non-ASCII symbols, and LaTeX's special characters
SYMBOLS = {
    "±": r"$\pm$", "Δ": r"$\Delta$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
    "†": r"\dag{}", "–": "--", "−": "$-$", "°": r"$^\circ$", "·": r"$\cdot$", "≈": r"$\approx$",
    "×": r"$\times$", "≠": r"$\neq$",
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%", "$": r"\$",
    "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def escape(text: str) -> str:
    """Plain text as LaTeX: specials escaped, the report's symbols as commands."""
    return "".join(SYMBOLS.get(ch, ch) for ch in text)


def cell(text: str) -> str:
    """A markdown table cell as LaTeX: links keep their text, **bold** becomes \\textbf."""
    text = _LINK.sub(r"\1", str(text).replace("\\|", "|"))
    parts = _BOLD.split(text)  # odd parts were bold
    return "".join(
        rf"\textbf{{{escape(part)}}}" if i % 2 else escape(part) for i, part in enumerate(parts)
    )


def booktabs(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    align: Sequence[str],
    caption: str | None = None,
    label: str | None = None,
) -> str:
    """A `table` environment with a booktabs `tabular`: one line per row of `rows`;
    `align` holds "left" or "right" per column."""
    spec = "".join("l" if a == "left" else "r" for a in align)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(cell(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# The file names of a group's LaTeX tables, by table.
TABLES = {"relative": "relative_performance", "published": "published_numbers"}


def latex_tables(group: Group) -> dict[str, str]:
    """The LaTeX (booktabs) twin of each markdown table of the group's page, by name."""
    caption = (f"{group.dataset}, {group.backbone}, {group.budget} budget: "
               + ("mean ± half-width of the 95 % confidence interval over seeds "
                  "(Student t); * the paired interval excludes zero."
                  if group.max_seeds >= 2 else "one seed, no interval."))
    out = {"relative": booktabs(*relative_cells(group), caption=caption,
                                label=f"tab:{group.slug}")}
    published = published_cells(group)
    if published is not None:
        out["published"] = booktabs(
            *published, caption=f"Beside {PUBLISHED_PASCAL_SWIN_T['source']}.",
            label=f"tab:{group.slug}-published",
        )
    return out
