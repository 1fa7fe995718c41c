"""`summary.csv`: the contract columns and every metric."""

from tests.report.builders import (
    build,
)


def test_csv_has_the_contract_columns_and_every_metric(tmp_path, published):
    build(tmp_path / "results", tmp_path / "reports")
    (path,) = (tmp_path / "reports").glob("*/summary.csv")
    header = path.read_text().splitlines()[0].split(",")
    for column in ["label", "method", "n_seeds", "delta_m", "trainable_params",
                   "semseg.miou", "human_parts.miou", "sal.miou", "sal.maxf", "normals.mean",
                   "normals.median", "delta_m_std", "semseg.miou_std", "peak_memory_mb",
                   "train_seconds", "train_images_per_second", "status", "error"]:
        assert column in header, column
    assert len(header) == len(set(header))
