"""Serving a trained checkpoint on the CPU: the batched transformers server vs llama.cpp on a GGUF of it.

\b
    python bench/local_serving.py              # about 3 minutes on 2 cores
    python bench/local_serving.py --requests 16 --max-tokens 256

Issue 15 asked whether evaluating local checkpoints through llama.cpp (the checkpoint converted to GGUF, served
by the same server as the embedded model) beats ``longwriter.llm.local``'s batched transformers server. Both
serve the same weights here: ``base`` de-quantizes the embedded SmolLM2-135M GGUF into an fp32 checkpoint
(what every trained checkpoint is), and llama.cpp's own quantizer re-encodes that GGUF as F16 (what converting
a trained checkpoint to GGUF without losing precision gives). The Q4_1 original is timed too, as the
embedded model runs. Each backend answers the same ``--requests`` eval-shaped requests (the ruler file's
prompts), all sent at once through the project's client as the eval stages send them (a fresh response cache,
so every call is generated), at temperature 0 with ``--max-tokens``. Throughput is completion tokens over the
wall time of the whole set, the server's start and model load excluded.

Results go to bench/results/local_serving.json: ``backends.<name>.{seconds,completion_tokens,tokens_per_s}``
and ``ratio_llama_f16_to_transformers`` (llama.cpp F16 tokens/s over the transformers server's).
"""

from __future__ import annotations

import asyncio
import ctypes
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from common import ROOT, save_result, sigterm_as_exit, table

from longwriter.benchmark import read_benchmark
from longwriter.llm import ClientSettings, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.server import default_gguf
from longwriter.train.base_model import BaseModelConfig, run_base


def _requantize(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, 0
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise click.ClickException(f"llama.cpp could not write {target}")


def _timed(spec: ModelSpec, prompts: list[str], max_tokens: int, cache_dir: Path) -> dict[str, Any]:
    settings = ClientSettings(cache_dir=str(cache_dir), max_concurrency=len(prompts))
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)

    async def work(llm: LLMClient) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(llm.complete([{"role": "user", "content": p}], sampling) for p in prompts))
        return time.perf_counter() - started

    seconds, stats = run_with_llm(spec, settings, work)
    return {"seconds": round(seconds, 2), "completion_tokens": stats.completion_tokens,
            "tokens_per_s": round(stats.completion_tokens / seconds, 1)}


@click.command(help=__doc__)
@click.option("--requests", default=16, show_default=True, help="Requests sent at once (the eval's batch).")
@click.option("--max-tokens", default=256, show_default=True, help="max_tokens of each request.")
def main(requests: int, max_tokens: int) -> None:
    import llama_cpp

    prompts = read_benchmark(ROOT / "data" / "eval" / "ruler.jsonl")["prompt"].to_list()[:requests]
    backends: dict[str, dict[str, Any]] = {}
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="local-serving-") as tmp:
        work = Path(tmp)
        gguf = default_gguf()
        run_base(BaseModelConfig(model="embedded"), work / "checkpoint", work / "base.json")
        _requantize(gguf, work / "f16.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
        specs = {"transformers_fp32_batched": ModelSpec(provider="local", path=str(work / "checkpoint"),
                                                        max_batch=requests),
                 "llama_cpp_f16": ModelSpec(provider="embedded", gguf_path=str(work / "f16.gguf")),
                 "llama_cpp_q4_1_embedded": ModelSpec(provider="embedded", gguf_path=str(gguf))}
        for name, spec in specs.items():
            click.echo(f"{name} ...", err=True)
            backends[name] = _timed(spec, prompts, max_tokens, work / f"cache-{name}")
    ratio = round(backends["llama_cpp_f16"]["tokens_per_s"] / backends["transformers_fp32_batched"]["tokens_per_s"], 3)
    result = {"requests": requests, "max_tokens": max_tokens, "backends": backends,
              "ratio_llama_f16_to_transformers": ratio}
    click.echo(table(["backend", "seconds", "completion tokens", "tokens/s"],
                     [[n, b["seconds"], b["completion_tokens"], b["tokens_per_s"]] for n, b in backends.items()]))
    click.echo(f"llama.cpp F16 / transformers: {ratio}")
    click.echo(f"results: {save_result('local_serving', result)}")


if __name__ == "__main__":
    main()
