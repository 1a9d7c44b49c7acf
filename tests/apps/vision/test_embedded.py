import pytest
import torch

from apps.vision.alignment import AlignmentConfig, lit_key
from apps.vision.embedded import (
    CACHE_APP,
    BenchmarkSpec,
    benchmark_features,
    load_mnist,
    stratified_split,
)
from core.cache import config_hash, entry_path

from .conftest import TINY_DATA


def test_cache_keys_are_those_written_before_the_cache_moved_to_core():
    # The default run's entries, as apps/vision/cache.py named them: a warm cache stays warm.
    assert config_hash(BenchmarkSpec().key()) == "824c2056fd04234c"
    assert config_hash(lit_key(AlignmentConfig())) == "6c9628c8b981ac89"
    with pytest.raises(ValueError, match=r"unknown shifts \['fog'\]"):
        BenchmarkSpec(shifts=["fog"]).key()


def test_stratified_split_is_disjoint_balanced_and_seeded():
    _, y = load_mnist()
    a = stratified_split(y, [100, 50, 30], seed=0)
    b = stratified_split(y, [100, 50, 30], seed=0)
    c = stratified_split(y, [100, 50, 30], seed=1)
    assert [len(i) for i in a] == [100, 50, 30]
    assert len(set(torch.cat(a).tolist())) == 180
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert torch.bincount(y[a[0]], minlength=10).min() == 10
    with pytest.raises(ValueError, match="need 6000 images"):
        stratified_split(y, [3000, 3000], seed=0)


def test_benchmark_features_are_one_entry_of_the_shared_cache(tiny_data, cache_dir):
    spec = BenchmarkSpec(**{k: TINY_DATA[k] for k in ("n_train", "n_val", "n_test", "shifts")})
    entry = entry_path("features", spec.key(), app=CACHE_APP, cache_dir=cache_dir)
    assert entry.is_file()  # written when the session's tiny data module was set up
    feats = benchmark_features(spec, cache_dir=cache_dir)
    assert set(feats) == {"train", "val", "test", *(f"shift/{s}" for s in spec.shifts)}
    assert torch.equal(feats["train"][0], tiny_data.sets["train"].tensors[0])
