"""``provider: local``: a checkpoint directory (e.g. what ``sft`` trained) served on loopback for a stage.

With vLLM installed and a GPU present, vLLM's OpenAI-compatible server runs it as a child process (fast,
batched). Otherwise transformers generates in-process on the CPU behind a minimal OpenAI-compatible HTTP
endpoint on 127.0.0.1, concurrent requests as one batch. Either way the stage talks to it through the shared
client, so the response cache, retries and token accounting are the same as for every other model.

The transformers server honours every sampling option the client sends, as OpenAI defines it: ``temperature``,
``top_p``, ``top_k``, ``max_tokens`` (or ``max_completion_tokens``), ``seed``, ``frequency_penalty`` and
``presence_penalty`` (over the completion's tokens so far), and ``stop`` (the text is cut before the first stop
string, finish_reason "stop"). It refuses with HTTP 400, naming the option, what it cannot do exactly:
``response_format`` other than text (it has no constrained decoding: a local spec's ``structured_output: auto``
sends none there), ``n`` > 1, streaming, logprobs, tools, and any option it does not know. Nothing is ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from longwriter.errors import ConfigError, LongwriterError
from longwriter.llm.spec import ModelSpec


def use_vllm() -> bool:
    """vLLM serves local checkpoints when it is installed and CUDA is available."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class _RowSampler:
    """Temperature/top-k/top-p sampling (in transformers' order) with one random generator per request.

    Each row draws from its own request's generator, so its tokens depend on its own seed only, not on which
    other requests happened to share its batch or when they finished. Temperature 0 is greedy. Each row's
    frequency and presence penalties (``penalties``: one pair per row) come first, as OpenAI and vLLM define
    them: a token's logit less frequency x its count in the row's completion so far, less presence if it is there.
    """

    def __init__(self, torch: Any, seeds: list[int], temperature: float, top_p: float, top_k: int | None = None,
                 penalties: list[tuple[float, float]] | None = None):
        self.torch, self.temperature, self.top_p, self.top_k = torch, temperature, top_p, top_k
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        # None when no row has a penalty: no counts are kept, and the logits are the model's
        self.penalties = penalties if penalties and any(f or p for f, p in penalties) else None
        self.counts: Any = None  # rows x vocabulary: each token's count in each row's completion so far

    def _penalised(self, rows: list[int], logits: Any) -> Any:
        torch = self.torch
        assert self.penalties is not None
        if self.counts is None:
            self.counts = torch.zeros(len(self.penalties), logits.shape[-1], device=logits.device)
        index = torch.tensor(rows, device=logits.device)
        weights = torch.tensor([self.penalties[row] for row in rows], device=logits.device)
        counts = self.counts[index]
        return logits - weights[:, :1] * counts - weights[:, 1:] * (counts > 0)

    def __call__(self, rows: list[int], logits: Any) -> list[int]:
        """One token for each row of ``logits``; ``rows`` names the request (and so the generator) of each."""
        chosen = self._choose(rows, logits.float() if self.penalties is None
                              else self._penalised(rows, logits.float()))
        if self.penalties is not None:
            self.counts[rows, chosen] += 1
        return chosen

    def _choose(self, rows: list[int], logits: Any) -> list[int]:
        torch = self.torch
        if self.temperature <= 0:
            return logits.argmax(dim=-1).tolist()
        # top-k (or the whole vocabulary) in descending order: top-p's cumulative sum needs that order anyway
        k = min(self.top_k or logits.shape[-1], logits.shape[-1])
        values, index = logits.topk(k, dim=-1)
        probs = torch.softmax(values / self.temperature, dim=-1)
        if self.top_p < 1.0:
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > self.top_p, 0.0)
        return [int(index[i, torch.multinomial(probs[i], 1, generator=self.generators[row]).item()])
                for i, row in enumerate(rows)]


@dataclass
class _Pending:
    body: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


class TransformersChat:
    """Chat completions from a transformers checkpoint. Concurrent requests with the same sampling settings are
    generated together (up to ``max_batch`` rows): on 2 CPU cores a batch of 16 makes ~6x the tokens/s of one."""

    def __init__(self, path: str | Path, n_threads: int | None = None, max_batch: int = 16,
                 gather_s: float = 0.05, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if n_threads:
            torch.set_num_threads(n_threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code
                                                          ).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.max_batch, self.gather_s = max_batch, gather_s
        self.queue: list[_Pending] = []
        self.cond = threading.Condition()
        self.worker = threading.Thread(target=self._serve, name="local-model-batcher", daemon=True)
        self.stopping = False
        self.worker.start()

    def complete(self, body: Any) -> dict[str, Any]:
        item = _Pending(_checked(body))  # a malformed request is refused here, before it can join a batch
        with self.cond:
            self.queue.append(item)
            self.cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    @staticmethod
    def _key(body: dict[str, Any]) -> tuple[float, float, int | None]:
        return float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0)), body.get("top_k")

    def _serve(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
            time.sleep(self.gather_s)  # let the rest of a burst of concurrent requests arrive
            with self.cond:
                key = self._key(self.queue[0].body)
                batch = [p for p in self.queue if self._key(p.body) == key][:self.max_batch]
                self.queue = [p for p in self.queue if p not in batch]
            try:
                for item, result in zip(batch, self._generate([p.body for p in batch]), strict=True):
                    item.result = result
            except Exception as e:
                if len(batch) == 1:
                    batch[0].error = e
                else:  # find the culprit: one request's failure must not fail the others
                    for item in batch:
                        try:
                            item.result = self._generate([item.body])[0]
                        except Exception as alone:
                            item.error = alone
            finally:
                for item in batch:
                    item.done.set()

    def _generate(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        torch = self.torch
        texts = [self.tokenizer.apply_chat_template(b["messages"], add_generation_prompt=True, tokenize=False)
                 for b in bodies]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        limits = [b["max_tokens"] for b in bodies]
        temperature, top_p, top_k = self._key(bodies[0])
        sampler = _RowSampler(torch, [b["seed"] for b in bodies], temperature, top_p, top_k,
                              [(b["frequency_penalty"], b["presence_penalty"]) for b in bodies])
        stops = [b["stop"] for b in bodies]
        with torch.inference_mode():
            rows_tokens = self._decode(inputs["input_ids"], inputs["attention_mask"], limits, sampler,
                                       lambda row, tokens: bool(stops[row]) and self._stop_hit(tokens, stops[row]))
        results = []
        for i, (body, tokens) in enumerate(zip(bodies, rows_tokens, strict=True)):
            prompt_tokens = int(inputs["attention_mask"][i].sum())
            end = next((j for j, t in enumerate(tokens) if t in self.stop_ids), None)
            finish = "stop" if end is not None else "length"
            generated = tokens[:end] if end is not None else tokens
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            cut = _first_stop(text, stops[i])
            if cut is not None:  # as OpenAI: the text ends before the stop string, which is left out
                text, finish = text[:cut], "stop"
            results.append({
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "local"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(generated) + (end is not None),
                          "total_tokens": prompt_tokens + len(generated) + (end is not None)},
            })
        return results

    def _stop_hit(self, tokens: list[int], stops: list[str]) -> bool:
        """Whether the text of ``tokens`` holds one of ``stops``. Only the newest token can have completed one, so
        the last few tokens are decoded first (a stop string of n characters spans at most ~4n tokens, byte
        fallback included); the whole text, only when they hold one, confirms it. A stop string this misses
        costs tokens, not the answer: ``_generate`` cuts the whole text at the first stop string."""
        tail = self.tokenizer.decode(tokens[-(4 * max(map(len, stops)) + 4):], skip_special_tokens=True)
        return _first_stop(tail, stops) is not None and _first_stop(
            self.tokenizer.decode(tokens, skip_special_tokens=True), stops) is not None

    def _decode(self, ids: Any, mask: Any, limits: list[int], sampler: _RowSampler,
                stopped: Any = None) -> list[list[int]]:
        """Each row's new tokens, up to its limit, its first stop token or (``stopped(row, tokens)`` true) its
        first stop string.

        A hand-written loop instead of ``generate`` for two costs that dominate long answers on a CPU: a row
        that has stopped leaves the batch at once (``generate`` keeps computing every row until the last one
        stops: with half the answers ending early that is ~40 % of the work), and the KV cache is preallocated
        (``generate``'s default cache concatenates at every step: 1.5x slower at 1,024 tokens, batch 16).
        """
        torch = self.torch
        from transformers import StaticCache

        width = ids.shape[1]
        cache = StaticCache(config=self.model.config, max_cache_len=width + max(limits))
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1)
        rows = list(range(len(limits)))
        tokens: list[list[int]] = [[] for _ in rows]
        for _ in range(max(limits)):
            chosen = sampler(rows, out.logits[:, -1])
            keep = []
            for j, (row, token) in enumerate(zip(rows, chosen, strict=True)):
                tokens[row].append(token)
                if token not in self.stop_ids and len(tokens[row]) < limits[row] \
                        and not (stopped is not None and stopped(row, tokens[row])):
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                cache.reorder_cache(index)
                mask, positions = mask[index], positions[index]
                rows, chosen = [rows[j] for j in keep], [chosen[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=torch.tensor(chosen, device=self.device)[:, None], attention_mask=mask,
                             position_ids=positions, cache=cache, use_cache=True)
        return tokens


# The request fields the server honours (``_checked`` reads each). Any other field is refused (HTTP 400, naming
# it) unless it is absent, null or the value that changes nothing (``_NO_OP``): an option is never ignored.
_HONOURED = frozenset({"model", "messages", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens",
                       "seed", "frequency_penalty", "presence_penalty", "stop", "response_format"})
_NO_OP: dict[str, Any] = {"n": 1, "stream": False, "logprobs": False, "top_logprobs": 0}
_PROVIDER = "provider local's transformers server"


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Where the first of ``stops`` to occur in ``text`` begins, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _checked(body: Any) -> dict[str, Any]:
    """The request with its sampling fields validated and normalised; ValueError (HTTP 400) if malformed or if it
    asks for an option this server cannot honour exactly (the message names the option and the provider)."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    for name, value in body.items():
        if name not in _HONOURED and value is not None and not (name in _NO_OP and value == _NO_OP[name]
                                                                and type(value) is type(_NO_OP[name])):
            raise ValueError(f"{name} is not supported by {_PROVIDER} (it honours {', '.join(sorted(_HONOURED))});"
                             f" leave {name} out, or serve the checkpoint with vLLM")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        kind = response_format.get("type") if isinstance(response_format, dict) else response_format
        raise ValueError(f"response_format {kind!r} is not supported by {_PROVIDER}: it has no constrained decoding "
                         f"(set the spec's structured_output to none or auto, which puts the schema in the prompt, "
                         f"or serve the checkpoint with vLLM)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError("messages must be a non-empty list of {role, content} objects")

    def number(name: str, default: float) -> float:
        value = body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)

    max_tokens = body.get("max_tokens")
    if max_tokens is None:  # OpenAI's newer name for it
        max_tokens = body.get("max_completion_tokens")
    elif body.get("max_completion_tokens") not in (None, max_tokens):
        raise ValueError(f"max_tokens ({max_tokens!r}) and max_completion_tokens "
                         f"({body['max_completion_tokens']!r}) disagree")
    if max_tokens is None:
        max_tokens = 512
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise ValueError(f"top_k must be an integer, got {top_k!r}")
    penalties = {name: number(name, 0.0) for name in ("frequency_penalty", "presence_penalty")}
    for name, value in penalties.items():
        if not -2.0 <= value <= 2.0:  # OpenAI's range (vLLM's too)
            raise ValueError(f"{name} must be within [-2, 2], got {value!r}")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    # as llama.cpp (0) and vLLM (-1): a top_k below 1 means no top-k cut
    return {**body, "temperature": number("temperature", 1.0), "top_p": number("top_p", 1.0),
            "top_k": top_k if top_k is not None and top_k >= 1 else None, "max_tokens": max_tokens, "seed": seed or 0,
            **penalties, "stop": stops}


def _handler(chat: TransformersChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: the client reports progress
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "local", "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self._send(200, chat.complete(body))
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": {"message": f"bad request: {e}", "type": "invalid_request_error"}})
            except Exception as e:  # a generation error is the server's, reported like any backend's 500
                self._send(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}})

    return Handler


@contextlib.contextmanager
def transformers_server(path: str | Path, n_threads: int | None = None, max_batch: int = 16,
                        trust_remote_code: bool = False) -> Iterator[str]:
    """Serve ``path`` with transformers on 127.0.0.1 until the block ends; yields the base URL."""
    chat = TransformersChat(path, n_threads, max_batch, trust_remote_code=trust_remote_code)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(chat))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="local-model", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        chat.close()


def spawn_server(cmd: list[str], log: IO[bytes]) -> subprocess.Popen:
    """Start a server child that cannot outlive this process: on Linux the kernel sends it SIGTERM when the thread
    that started it dies, ``kill -9`` included (PR_SET_PDEATHSIG; a parent already gone by the time the child
    asks has the child exit at once), and it leads its own process group, which ``stop_server`` signals whole, so
    the processes it starts (vLLM's engine core and tensor-parallel workers) go with it. Its own group also keeps
    a terminal's Ctrl-C for the stage, which then stops the server itself, in order."""
    parent = os.getpid()

    def die_with_parent() -> None:  # runs in the child between fork and exec
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl: nobody is left to signal
            os._exit(1)

    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent if sys.platform == "linux" else None)


def stop_server(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to ``proc``'s whole process group (``spawn_server`` made it its leader), SIGKILL to what is left
    after ``grace_s``. The group is signalled even when the leader has exited: its children may not have."""
    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    signal_group(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    signal_group(signal.SIGKILL)
    proc.wait()


def vllm_command(path: str | Path, alias: str, port: int, spec: ModelSpec) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server (``vllm serve``'s engine arguments) for ``spec``."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
           "--served-model-name", alias, "--host", "127.0.0.1", "--port", str(port),
           "--tensor-parallel-size", str(spec.vllm_tensor_parallel_size),
           "--gpu-memory-utilization", str(spec.vllm_gpu_memory_utilization)]
    if spec.vllm_max_model_length is not None:
        cmd += ["--max-model-len", str(spec.vllm_max_model_length)]
    if spec.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd


@contextlib.contextmanager
def vllm_server(path: str | Path, alias: str, spec: ModelSpec, log_dir: str | Path,
                start_timeout_s: float) -> Iterator[str]:
    """vLLM's OpenAI-compatible server for ``path`` as a child process (``spawn_server``); yields the base URL."""
    from longwriter.llm.server import _free_port, _ready, _tail

    port = _free_port()
    log_path = Path(log_dir) / "vllm-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = spawn_server(vllm_command(path, alias, port, spec), log)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _ready(base_url):
            if proc.poll() is not None:
                raise LongwriterError(f"vLLM server for {path} exited with code {proc.returncode} before "
                                      f"answering; its log ({log_path}) ends with:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise LongwriterError(f"vLLM server for {path} did not answer within {start_timeout_s:.0f} s "
                                      f"(llm.server_start_timeout_s); its log ({log_path}) ends with:\n"
                                      f"{_tail(log_path)}")
            time.sleep(1.0)
        yield base_url
    finally:
        stop_server(proc)


def local_model_path(spec: ModelSpec) -> Path:
    if not spec.path:
        raise ConfigError("provider 'local' needs path: a checkpoint directory")
    path = Path(spec.path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"local model {path}: no config.json (not a transformers checkpoint directory)")
    return path


@cache
def checkpoint_identity(path: str) -> str:
    """Content hash of a checkpoint directory (weights, config, tokenizer): cache keys follow the weights."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"checkpoint {root}: directory not found")
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(root)).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
