"""Prepared data and step groups are exactly what the goldens recorded (tests/golden_data.py):
every example's fields, the eval samples, the report and the step order of two epochs for
every format, a mixture, dedup, overlong, validation file or split, packing, CSV and
Parquet. Each configuration is prepared twice: tokenized, then from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import golden_data

GOLDENS = json.loads(golden_data.GOLDENS.read_text())


@pytest.fixture(scope="module")
def fixture_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, golden_data.Case]:
    return golden_data.cases(tmp_path_factory.mktemp("golden-data"))


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_prepared_data_matches_the_goldens(
    name: str, fixture_cases: dict[str, golden_data.Case], private_cache_dir: Path
) -> None:
    tokenized = golden_data.digests(fixture_cases[name])
    from_cache = golden_data.digests(fixture_cases[name])

    assert tokenized == GOLDENS[name]
    assert from_cache == GOLDENS[name]


def test_every_configuration_has_a_golden(tmp_path: Path) -> None:
    assert sorted(golden_data.cases(tmp_path)) == sorted(GOLDENS)
