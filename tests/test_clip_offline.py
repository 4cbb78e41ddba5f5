"""load_clip fails in seconds when pretrained weights are neither cached nor downloadable."""
from __future__ import annotations

import time

import pytest

from negkit.clip import model as clip_model


def test_offline_without_cached_weights_fails_fast_and_says_where_they_go(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        clip_model.load_clip("ViT-B-32", "openai", cache_dir=tmp_path, device="cpu")
    assert time.monotonic() - start < 10  # not the Hub's minute of retries
    text = str(err.value)
    assert "timm/vit_base_patch32_clip_224.openai" in text and "checkpoint=" in text and "offline" in text


def test_cached_weights_pass_the_check_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(clip_model, "_hub_reachable", lambda timeout=3.0: pytest.fail("network asked"))
    snap = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc")
    (snap / "snapshots" / "abc").mkdir(parents=True)
    (snap / "snapshots" / "abc" / "open_clip_model.safetensors").write_bytes(b"x")
    clip_model._require_weights_or_network("ViT-B-32", "openai", tmp_path)  # found in the cache: no error
    monkeypatch.setattr(clip_model, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FileNotFoundError, match="ViT-B-16/openai"):
        clip_model._require_weights_or_network("ViT-B-16", "openai", tmp_path)
