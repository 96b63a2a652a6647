"""Embedded throughput: decode tokens/s of the embedded model through the project's client and llama.cpp
server, against ``llama_cpp.Llama`` called in-process on the same prompt, max_tokens and threads.

    python bench/embedded_throughput.py [--max-tokens 256] [--repeats 3]

Both sides decode greedily (temperature 0) from the same chat prompt, so they produce the same tokens; the
figure is completion tokens / wall seconds of the call, best of ``--repeats`` runs (prompt evaluation
included on both sides). For the in-process calls it also records llama.cpp's own decode and
prompt-evaluation rates (its perf counters). The client side uses a fresh response cache so every call is
paid. Target: the served path reaches at least 0.90 of the in-process rate. Results also go to
bench/results/embedded_throughput.json.

``judge_sized`` times one judge-sized call (a ~1,240-token prompt, 60 tokens out, best of ``--repeats``)
in-process with llama-cpp-python server's defaults (``logits_all`` on, no flash attention) and with the flags
``longwriter.llm.server`` starts it with (``logits_all`` off, flash attention): why those flags are set.
``write_shaped`` times 15 interleaved write-shaped calls without and with the server's RAM prompt cache.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click

from longwriter.files import write_json
from longwriter.llm import ClientSettings, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.server import resolve_gguf

PROMPT = [{"role": "user", "content": "Write a long, detailed essay about the history of lighthouses, their "
                                      "keepers, and how technology changed them."}]


def in_process(spec: ModelSpec, max_tokens: int, repeats: int, threads: int) -> dict[str, float | int]:
    """Best-of-``repeats`` rates of ``llama_cpp.Llama`` in-process: completion tokens / wall seconds of the call,
    and llama.cpp's own decode and prompt-evaluation rates (its perf counters, reset before each call)."""
    import llama_cpp
    from llama_cpp import Llama

    model = Llama(str(resolve_gguf(spec)), n_ctx=spec.n_ctx, n_threads=threads, n_threads_batch=threads,
                  flash_attn=True, verbose=False)  # as the server runs it
    best = {"rate": 0.0, "tokens": 0, "decode_rate": 0.0, "prompt_rate": 0.0, "prompt_tokens": 0}
    for _ in range(repeats):
        model.reset()  # no prompt reuse between repeats, as for the server's first request
        llama_cpp.llama_perf_context_reset(model.ctx)
        started = time.perf_counter()
        out = model.create_chat_completion(messages=PROMPT, max_tokens=max_tokens, temperature=0.0)
        seconds = time.perf_counter() - started
        perf = llama_cpp.llama_perf_context(model.ctx)
        best["tokens"] = out["usage"]["completion_tokens"]
        best["rate"] = max(best["rate"], best["tokens"] / seconds)
        if perf.t_eval_ms > 0:
            best["decode_rate"] = max(best["decode_rate"], perf.n_eval / perf.t_eval_ms * 1e3)
        if perf.t_p_eval_ms > 0:
            best["prompt_rate"] = max(best["prompt_rate"], perf.n_p_eval / perf.t_p_eval_ms * 1e3)
            best["prompt_tokens"] = perf.n_p_eval
    return best


JUDGE_SIZED = " ".join(f"Item {i} of the record is a thing that happened." for i in range(115))


def judge_sized(spec: ModelSpec, repeats: int, threads: int, logits_all: bool, flash_attn: bool) -> dict:
    """Best-of-``repeats`` wall seconds of one long-prompt, short-answer call (a judge's shape), in-process."""
    from llama_cpp import Llama

    model = Llama(str(resolve_gguf(spec)), n_ctx=8192, n_threads=threads, n_threads_batch=threads,
                  logits_all=logits_all, flash_attn=flash_attn, verbose=False)
    best, usage = float("inf"), {}
    for i in range(repeats):
        model.reset()
        started = time.perf_counter()
        out = model.create_completion(f"{JUDGE_SIZED} ({i})", max_tokens=60, temperature=0.0)
        best, usage = min(best, time.perf_counter() - started), out["usage"]
    return {"logits_all": logits_all, "flash_attn": flash_attn, "seconds": round(best, 2),
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}


def write_shaped(spec: ModelSpec, threads: int, ram_cache: bool) -> dict:
    """Wall seconds of 15 write-shaped calls in-process: 3 pieces x 5 paragraphs, interleaved as write's
    concurrent pieces reach a one-slot server; each prompt repeats its piece's instruction, plan and history."""
    from llama_cpp import Llama, LlamaRAMCache

    model = Llama(str(resolve_gguf(spec)), n_ctx=8192, n_threads=threads, n_threads_batch=threads,
                  flash_attn=True, verbose=False)
    if ram_cache:
        model.set_cache(LlamaRAMCache(1 << 30))  # as the server runs it
    pieces = {p: f"Instruction {p}: write about topic {p} at length. Plan: " + " ".join(
        f"point {p}{i}" for i in range(60)) for p in "ABC"}
    written = dict.fromkeys(pieces, "")
    started, prompt_tokens = time.perf_counter(), 0
    for n in range(1, 6):
        for p in pieces:
            prompt = f"{pieces[p]}\n## Text written so far\n{written[p]}\n## Your task\nWrite paragraph {n}."
            out = model.create_completion(prompt, max_tokens=150, temperature=0.7, seed=n)
            written[p] += out["choices"][0]["text"] + "\n\n"
            prompt_tokens += out["usage"]["prompt_tokens"]
    return {"ram_cache": ram_cache, "calls": 15, "seconds": round(time.perf_counter() - started, 1),
            "prompt_tokens": prompt_tokens}


def served(spec: ModelSpec, max_tokens: int, repeats: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as cache_dir:
        settings = ClientSettings(cache_dir=cache_dir, max_concurrency=1)

        async def work(llm: LLMClient) -> tuple[float, int]:
            best, tokens = 0.0, 0
            for i in range(repeats):
                # a distinct sample index defeats the response cache; temperature 0 keeps the tokens identical
                started = time.perf_counter()
                reply = await llm.complete(PROMPT, Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens),
                                           sample=i)
                seconds = time.perf_counter() - started
                tokens = reply.completion_tokens
                if i > 0 or repeats == 1:  # the first call also pays for the server's lazy start
                    best = max(best, tokens / seconds)
            return best, tokens

        return run_with_llm(spec, settings, work)[0]


@click.command(help=__doc__)
@click.option("--max-tokens", default=256, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--out", default="bench/results/embedded_throughput.json", show_default=True)
def main(max_tokens: int, repeats: int, out: str) -> None:
    threads = os.cpu_count() or 1
    spec = ModelSpec(n_ctx=2048, n_threads=threads)
    served_rate, served_tokens = served(spec, max_tokens, repeats + 1)
    local = in_process(spec, max_tokens, repeats, threads)
    local_rate, local_tokens = float(local["rate"]), int(local["tokens"])
    ratio = served_rate / local_rate if local_rate else 0.0
    result = {"max_tokens": max_tokens, "threads": threads, "repeats": repeats,
              "in_process_tokens": local_tokens, "served_tokens": served_tokens,
              "in_process_tokens_per_s": round(local_rate, 1), "served_tokens_per_s": round(served_rate, 1),
              "ratio": round(ratio, 3), "target": 0.90, "pass": ratio >= 0.90,
              # llama.cpp's own counters for the in-process calls (best of the repeats): decode alone, and
              # prompt evaluation alone over the chat prompt's tokens
              "in_process_decode_tokens_per_s": round(float(local["decode_rate"]), 1),
              "in_process_prompt_tokens_per_s": round(float(local["prompt_rate"]), 1),
              "in_process_prompt_tokens": int(local["prompt_tokens"]),
              "judge_sized": {"server_defaults": judge_sized(spec, repeats, threads, True, False),
                              "as_started": judge_sized(spec, repeats, threads, False, True)}}
    result["write_shaped"] = {"without_cache": write_shaped(spec, threads, False),
                              "with_cache": write_shaped(spec, threads, True)}
    shaped = result["write_shaped"]
    shaped["speedup"] = round(shaped["without_cache"]["seconds"] / shaped["with_cache"]["seconds"], 2)
    sized = result["judge_sized"]
    sized["speedup"] = round(sized["server_defaults"]["seconds"] / sized["as_started"]["seconds"], 2)
    click.echo(f"{'path':<28} {'tokens':>7} {'tokens/s':>9}")
    click.echo(f"{'llama_cpp.Llama in-process':<28} {local_tokens:>7} {local_rate:>9.1f}")
    click.echo(f"{'client -> llama.cpp server':<28} {served_tokens:>7} {served_rate:>9.1f}")
    click.echo(f"in-process, llama.cpp's counters: decode {result['in_process_decode_tokens_per_s']} tokens/s, "
               f"prompt evaluation {result['in_process_prompt_tokens_per_s']} tokens/s "
               f"({result['in_process_prompt_tokens']} prompt tokens)")
    click.echo(f"judge-sized call ({sized['as_started']['prompt_tokens']} prompt tokens, 60 out): "
               f"{sized['server_defaults']['seconds']} s with the server's defaults, "
               f"{sized['as_started']['seconds']} s as started ({sized['speedup']}x)")
    click.echo(f"write-shaped calls (15, {shaped['with_cache']['prompt_tokens']} prompt tokens): "
               f"{shaped['without_cache']['seconds']} s without the prompt cache, "
               f"{shaped['with_cache']['seconds']} s with it ({shaped['speedup']}x)")
    click.echo(f"ratio {ratio:.3f} (target >= 0.90): {'PASS' if ratio >= 0.90 else 'MISS'}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out)


if __name__ == "__main__":
    main()
