"""Results directories the report's tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.builders import published_records, three_seed_records


@pytest.fixture
def published(tmp_path) -> Path:
    """A results directory with one seed of each configuration of the MTLoRA paper's
    Table 1, at the published metrics."""
    results = tmp_path / "results"
    published_records(results)
    return results


@pytest.fixture
def three_seeds(tmp_path) -> Path:
    """A results directory with the reference and four configurations, three seeds each."""
    results = tmp_path / "results"
    three_seed_records(results)
    return results
