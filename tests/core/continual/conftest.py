"""Run these tests on one intra-op thread: their tensors are tiny (see tests/threads.py)."""

from tests.threads import one_thread  # noqa: F401  (autouse fixture)
