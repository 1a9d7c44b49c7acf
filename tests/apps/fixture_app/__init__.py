"""A fixture app for the contract test: the smallest folder that keeps the app contract.

It lives under ``tests/apps/`` rather than ``apps/``, so it ships with no release, and
``tests/apps/test_contract.py`` finds it the way it finds the real apps (a folder holding a
``train.py``) and runs every contract check on it. It builds on the core's example app: the
digits data module as it is, and its own one-layer module with an SSF adapter (the example
uses LoRA on an MLP), whose ``report.md`` is the base class's metrics table.

Run it by hand: ``python -m tests.apps.fixture_app.train --config
tests/apps/fixture_app/configs/tiny.yaml``.
"""
