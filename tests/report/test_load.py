"""Reading records: a malformed record, or one of an unknown schema version, is named
and skipped."""

from benchmark.report.command import main
from benchmark.report.load import load
from tests.report.builders import (
    PUBLISHED,
    make_record,
    published_records,
    read_csv,
    write,
)


def test_a_malformed_record_is_named_and_skipped(tmp_path, capsys):
    results = tmp_path / "results"
    published_records(results)
    bad_json = results / "broken" / "result.json"
    bad_json.parent.mkdir()
    bad_json.write_text("{not json")
    wrong_type = write(results, {**make_record("lora", "lora", (60, 50, 50, 20)), "seed": "0"})
    no_metrics = make_record("bitfit", "bitfit", (60, 50, 50, 20))
    del no_metrics["metrics"]["normals"]
    no_metrics_path = write(results, no_metrics)
    out = tmp_path / "reports"
    assert main([f"results_dir={results}", f"output_dir={out}"]) == 0
    err = capsys.readouterr().err
    for path in (bad_json, wrong_type, no_metrics_path):
        assert str(path) in err
    rows = read_csv(out)
    assert set(rows) == set(PUBLISHED)


def test_a_record_of_an_unknown_schema_version_is_skipped_with_a_warning(tmp_path):
    ok = make_record("full_ft", "full_ft", (60, 50, 50, 20))
    future = {**make_record("lora", "lora", (60, 50, 50, 20)), "schema": 99}
    write(tmp_path, ok)
    path = write(tmp_path, future)
    records, warnings = load(tmp_path)
    assert [r["method"] for r in records] == ["full_ft"]
    assert warnings == [f"skipped record {path}: unknown schema version 99 (this version reads "
                        "1; a newer mtpeft wrote it?)"]
