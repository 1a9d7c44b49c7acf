"""Shared fixtures of the chest X-ray app's tests: one intra-op thread, small data."""

from __future__ import annotations

import logging

import pytest

from tests.threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="session")
def embedded_studies():
    """All embedded studies (real IU X-ray reports, findings section), parsed once."""
    from apps.medical_cxr.sources import load_embedded

    logging.getLogger("apps.medical_cxr.sources").setLevel(logging.ERROR)
    return load_embedded()


@pytest.fixture()
def iu_layout(tmp_path):
    """Report XMLs and PNGs of three IU X-ray studies (see layouts.make_iu_layout)."""
    from .layouts import make_iu_layout

    return make_iu_layout(tmp_path)
