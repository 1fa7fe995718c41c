"""`summary.csv`: one row per configuration label of a group (protocol §5.3).

The columns that existed first keep their place (label, method, status, seeds, Δm, counts,
costs, every metric, standard deviations, changes, error); the 95 % intervals and the paired
comparisons come after them. Numbers are written plainly: integers without a decimal point,
others rounded to four decimals, NaN as `nan`, nothing as an empty cell.
"""

from __future__ import annotations

import csv
import io
import math

from benchmark.report import statistics as stats
from benchmark.report.groups import Group, mean_std
from benchmark.report.text import error_text
from benchmark.tasks import TASKS


def _csv_number(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(round(float(value), 4))


def summary_rows(group: Group) -> tuple[list[str], list[list[str]]]:
    primary = [(t, TASKS[t].primary) for t in group.tasks]
    full = group.full_ft_trainable()
    header = [
        "label", "method", "status", "n_seeds", "seeds", "delta_m", "delta_m_std",
        "delta_m_reference", "trainable_params", "total_params", "trainable_share_full_ft",
        "peak_memory_mb", "peak_memory_mb_std", "memory_kind", "train_seconds",
        "train_seconds_std", "train_images_per_second", "train_images_per_second_std",
    ]
    header += [f"{t}.{m}" for t, m in group.metric_keys]
    header += [f"{t}.{m}_std" for t, m in primary]
    header += [f"{t}.change" for t in group.tasks]
    header += ["error"]
    # appended later: 95 % t intervals and the paired comparisons (benchmark.report.statistics)
    interval_of = ["delta_m", *(f"{t}.{m}" for t, m in group.metric_keys), "peak_memory_mb",
                   "train_seconds", "train_images_per_second"]
    header += [f"{name}_ci95_{end}" for name in interval_of for end in ("low", "high")]
    compared = ["vs_best", "vs_full_ft"]
    header += ["vs_best"] + [f"{c}_{part}" for c in compared
                             for part in ("delta_m", "ci95_low", "ci95_high", "excludes_zero",
                                          "n_seeds")]
    standing = group.standings()
    out = []
    for row in group.rows:
        if row.failed:
            errors = "; ".join(
                f"seed {r['seed']}: {error_text(r)}"
                for r in row.runs
            )
            values = {"label": row.label, "method": row.method, "status": "failed",
                      "n_seeds": "0", "seeds": " ".join(map(str, row.seeds)), "error": errors}
            out.append([values.get(h, "") for h in header])
            continue
        trainable = mean_std(row.params("trainable"))[0]
        values = {
            "label": row.label, "method": row.method, "status": "ok",
            "n_seeds": str(len(row.runs)), "seeds": " ".join(map(str, row.seeds)),
            "delta_m_reference": (
                "" if not row.delta_m else "mean" if row.mean_reference_seeds else "seed"
            ),
            "trainable_params": _csv_number(trainable),
            "total_params": _csv_number(mean_std(row.params("total"))[0]),
            "trainable_share_full_ft": _csv_number(
                100 * trainable / full if full and trainable is not None else None
            ),
            "memory_kind": " ".join(k for k in row.memory_kinds if row.cost("peak_memory_mb")),
        }
        for name, samples in [
            ("delta_m", row.delta_m),
            ("peak_memory_mb", row.cost("peak_memory_mb")),
            ("train_seconds", row.cost("train_seconds")),
            ("train_images_per_second", row.cost("train_images_per_second")),
        ]:
            mean, std = mean_std(samples)
            values[name], values[f"{name}_std"] = _csv_number(mean), _csv_number(std)
        for t, m in group.metric_keys:
            mean, std = mean_std(row.metric(t, m))
            values[f"{t}.{m}"], values[f"{t}.{m}_std"] = _csv_number(mean), _csv_number(std)
        for t in group.tasks:
            values[f"{t}.change"] = _csv_number(mean_std(row.change.get(t, []))[0])
        samples = {"delta_m": row.delta_m, "peak_memory_mb": row.cost("peak_memory_mb"),
                   "train_seconds": row.cost("train_seconds"),
                   "train_images_per_second": row.cost("train_images_per_second"),
                   **{f"{t}.{m}": row.metric(t, m) for t, m in group.metric_keys}}
        for name in interval_of:
            found = stats.interval(samples[name])
            values[f"{name}_ci95_low"] = _csv_number(found and found.low)
            values[f"{name}_ci95_high"] = _csv_number(found and found.high)
        mine = standing.get(row.label, stats.Standing(""))
        values["vs_best"] = mine.verdict
        for name, found in (("vs_best", mine.vs_best), ("vs_full_ft", mine.vs_full_ft)):
            if found is not None:
                d = found.difference
                values[f"{name}_delta_m"] = _csv_number(d.mean)
                values[f"{name}_ci95_low"] = _csv_number(d.low)
                values[f"{name}_ci95_high"] = _csv_number(d.high)
                excludes = d.excludes_zero
                values[f"{name}_excludes_zero"] = "" if excludes is None else str(excludes).lower()
                values[f"{name}_n_seeds"] = str(len(found.seeds))
        out.append([values.get(h, "") for h in header])
    return header, out


def summary_csv(group: Group) -> str:
    header, rows = summary_rows(group)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
