"""JSON replies of the embedded model: llama-cpp-python's grammar sampling against the embedded server's.

    python bench/grammar_sampling.py [--repeats 2]

In-process ``llama_cpp.Llama`` (the server's flags: flash attention, no ``logits_all``), greedy, one call per
shape: a judge rating (the judge's schema, a ~400-token prompt) and a plan (plan's schema). ``full_vocabulary``
is llama-cpp-python's own sampler chain, the grammar matched against every token at every step; ``lazy`` is
``longwriter.llm.llama_server``'s, which the embedded server runs: the token drawn without the grammar is
checked alone, and the grammar goes over more tokens only when it rejects that one. Per shape: wall seconds
(best of ``--repeats``, prompt evaluation included), completion tokens, and whether the two samplers wrote the
same reply (greedy: they must). Results go to bench/results/grammar_sampling.json.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from longwriter.agentwrite.plan import plan_schema
from longwriter.files import write_json
from longwriter.judge import DIMENSIONS, RATING_SCHEMA
from longwriter.llm import ModelSpec, llama_server
from longwriter.llm.server import resolve_gguf

ESSAY = "Rivers carry water and sediment from the mountains to the sea, and cities grew on their banks. " * 16
SHAPES = {
    "rating": (RATING_SCHEMA, f"Rate the essay below from 1 to 5 on {', '.join(DIMENSIONS)}, with your analysis "
                              f"first. Reply in JSON.\n\nEssay: {ESSAY}"),
    "plan": (plan_schema(3, 8), "Plan a 3,000-word essay on the history of bridges: one paragraph per entry, "
                                "each with its main point and its word count. Reply in JSON."),
}


def run(model: object, repeats: int) -> dict[str, dict]:
    out = {}
    for name, (schema, prompt) in SHAPES.items():
        best, reply = float("inf"), None
        for _ in range(repeats):
            model.reset()
            started = time.perf_counter()
            reply = model.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0,
                                                 max_tokens=400,
                                                 response_format={"type": "json_object", "schema": schema})
            best = min(best, time.perf_counter() - started)
        out[name] = {"seconds": round(best, 2), "completion_tokens": reply["usage"]["completion_tokens"],
                     "text": reply["choices"][0]["message"]["content"]}
    return out


@click.command(help=__doc__)
@click.option("--repeats", default=2, show_default=True)
@click.option("--out", default="bench/results/grammar_sampling.json", show_default=True)
def main(repeats: int, out: str) -> None:
    from llama_cpp import Llama

    threads = os.cpu_count() or 1
    model = Llama(str(resolve_gguf(ModelSpec())), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                  flash_attn=True, logits_all=False, verbose=False)
    full = run(model, repeats)
    llama_server.install()
    lazy = run(model, repeats)
    result = {"threads": threads, "repeats": repeats, "full_vocabulary": full, "lazy": lazy}
    for name in SHAPES:
        result[name] = {"same_reply": full[name]["text"] == lazy[name]["text"],
                        "speedup": round(full[name]["seconds"] / lazy[name]["seconds"], 2)}
        click.echo(f"{name:<7} {full[name]['completion_tokens']:>4} tokens: full vocabulary {full[name]['seconds']} s, "
                   f"lazy {lazy[name]['seconds']} s ({result[name]['speedup']}x), "
                   f"same reply: {result[name]['same_reply']}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out)


if __name__ == "__main__":
    main()
