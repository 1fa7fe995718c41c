"""Report pages a reader can trust: unknown record versions skipped, one page per group,
a reference hint that runs as printed."""

from __future__ import annotations

import shlex

from omegaconf import OmegaConf

from benchmark.config import instantiate_method
from benchmark.experiment import reference_dir
from benchmark.records import run_dir
from benchmark.report import build_groups, load, reference_command
from benchmark.run import compose_all, expand
from tests.conftest import SMALL_DATA
from tests.test_report import make_record, write

SWEEP = ["method=full_ft", "budget=smoke", *SMALL_DATA, "budget.lr=1e+40,1e-40"]


def _records(results):
    records = []
    for cfg in compose_all(expand(SWEEP)):
        record = make_record("full_ft", "full_ft", (60, 50, 50, 20), dataset="synthetic",
                             backbone="swin_micro", budget="smoke")
        record["config"] = OmegaConf.to_container(cfg, resolve=True)
        record["config"]["results_dir"] = str(results)
        records.append((cfg, record))
    return records


def test_a_record_of_an_unknown_schema_version_is_skipped_with_a_warning(tmp_path):
    ok = make_record("full_ft", "full_ft", (60, 50, 50, 20))
    future = {**make_record("lora", "lora", (60, 50, 50, 20)), "schema": 99}
    write(tmp_path, ok)
    path = write(tmp_path, future)
    records, warnings = load(tmp_path)
    assert [r["method"] for r in records] == ["full_ft"]
    assert warnings == [f"skipped record {path}: unknown schema version 99 (this version reads "
                        "1; a newer mtpeft wrote it?)"]


def test_groups_that_differ_only_in_a_swept_value_get_pages_of_their_own(tmp_path):
    groups = build_groups([{**r, "_path": f"{i}"} for i, (_, r) in enumerate(_records(tmp_path))])
    assert len(groups) == 2
    assert len({g.slug for g in groups}) == 2
    assert {g.budget for g in groups} == {"smoke (lr=1e+40)", "smoke (lr=1e-40)"}


def test_the_hint_for_a_missing_reference_runs_as_printed(tmp_path):
    pairs = _records(tmp_path)
    groups = build_groups([{**r, "_path": f"{i}"} for i, (_, r) in enumerate(pairs)])
    for group in groups:
        command = reference_command(group)
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "benchmark.run"]
        (cfg,) = compose_all(expand(words[3:]))
        # the run the hint trains is the reference that the group's runs look for
        (original,) = [c for c, r in pairs if group.budget.endswith(
            f"(lr={r['config']['budget']['lr']})")]
        original.results_dir = str(tmp_path)
        assert run_dir(cfg, instantiate_method(cfg.method).label) == reference_dir(original)
