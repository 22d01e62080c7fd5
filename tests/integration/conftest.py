"""Fixtures for the integration tests that need a Kubernetes API (see tests/kube_api.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kube_api import Kube, serve_kube


@pytest.fixture
def kube() -> Iterator[Kube]:
    """A fresh emulated Kubernetes API on 127.0.0.1 for one test (FineTuneJob CRD, core,
    batch, events, leases), stopped after it; the ``kubernetes`` client's default
    configuration points at it meanwhile."""
    with serve_kube() as api:
        yield api
