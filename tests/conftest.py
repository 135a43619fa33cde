"""Test-session set-up: fast XLA compilation (tests are compile-bound on tiny grids) and float64."""

import os

# Tiny grids make the suite compile-bound: lower XLA's CPU optimisation level (≈2× faster overall).
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"]
).strip()

# Commands the tests run keep their compiled programs in a cache of this session, never in the user's.
os.environ.setdefault("ASSIM_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="assim-test-cache-"))

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

import models  # noqa: E402,F401  (enables float64 once, before any test builds arrays)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled XLA programs when it ends.

    Hundreds of CPU executables accumulated in one process made a later XLA compilation segfault
    (seen twice, at the same place, in the full suite only); modules share no compiled state they need.
    """
    yield
    jax.clear_caches()
    gc.collect()
