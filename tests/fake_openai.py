"""A fault-injecting fake of the OpenAI chat-completions API, for crash/rerun tests.

It exists so the pipeline's retry, timeout and resume logic can be exercised
against every way a real inference server misbehaves (rate limits, 5xx, hangs,
dropped connections, broken bodies) without a model or network. Answers are
deterministic per request body, so a rerun that re-sends a request gets the
same text and the request log tells exactly which calls were paid for twice.

Standard library only, so it runs wherever the tests run.

    with FakeOpenAIServer(script=["429", "ok"]) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="x")

    python tests/fake_openai.py --port 0 --fault-rate 0.2 --log requests.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import random
import signal
import sys
import threading
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULTS: tuple[str, ...] = ("429", "500", "503", "hang", "drop", "malformed", "truncated")

# ~200 plain words: enough variety that texts differ, small enough to read in a failing assert.
_VOCAB_TEXT = """
    the a an and or but so because while when after before since until if then than
    this that these those it its they them their we our you your he she his her one two
    three many few some every each other more most less least very quite rather still
    time year day night morning evening week month world life house home city road river
    mountain forest field garden window door table chair book letter story chapter page
    word voice song music light shadow fire water stone wind rain snow sun moon star sky
    sea ship island bridge tower market street village friend mother father child teacher
    doctor writer painter farmer soldier king queen stranger crowd people family history
    memory dream idea question answer reason problem plan promise secret journey season
    walk run speak write read think know remember forget find lose keep give take make
    see hear feel hold open close begin end carry follow watch wait learn teach build
    break grow fall rise turn return leave arrive change bring send call show tell ask
    old new young long short small large quiet loud bright dark warm cold early late
    slow quick gentle strong simple strange careful honest distant sudden certain
    ordinary silent golden empty full heavy soft
"""
_VOCAB: tuple[str, ...] = tuple(_VOCAB_TEXT.split())

# Schema "format"s a validator (e.g. pydantic) actually checks; everything else stays free text.
_FORMAT_EXAMPLES: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "email": "writer@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}

# Past this nesting depth objects keep only required properties and arrays their minimum
# length, so recursive schemas ($ref cycles) terminate.
_MAX_DEPTH = 8


def request_key(body: Any) -> str:
    """Identity of a request: equal bodies (whatever the key order) give equal keys."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def approx_tokens(n_words: int) -> int:
    """ceil(n_words * 4 / 3) in integer arithmetic, the usual words-to-tokens rule of thumb."""
    return (4 * n_words + 2) // 3


def fake_text(rng: random.Random, n_words: int) -> str:
    """Exactly n_words words of lowercase prose in capitalised sentences ending with '.'."""
    sentences: list[str] = []
    remaining = n_words
    while remaining > 0:
        k = min(remaining, rng.randint(6, 14))
        ws = [rng.choice(_VOCAB) for _ in range(k)]
        ws[0] = ws[0].capitalize()
        ws[-1] += "."
        sentences.append(" ".join(ws))
        remaining -= k
    return " ".join(sentences)


class _SchemaFaker:
    """Builds a deterministic instance of a JSON schema (the subset structured output uses)."""

    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def _resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def make(self, s: Any, depth: int = 0) -> Any:
        rng = self.rng
        if not isinstance(s, dict):  # `true` / `{}` schemas accept anything
            return fake_text(rng, 2)
        if "$ref" in s:
            return self.make(self._resolve(s["$ref"]), depth)
        if "const" in s:
            return s["const"]
        if "enum" in s:
            return rng.choice(s["enum"])
        for comb in ("anyOf", "oneOf"):
            if comb in s:
                options = [o for o in s[comb] if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.make((options or s[comb])[0], depth)
        if "allOf" in s:
            merged: dict[str, Any] = {}
            for part in s["allOf"]:
                part = self._resolve(part["$ref"]) if "$ref" in part else part
                merged.update(part)
            return self.make(merged, depth)

        typ = s.get("type")
        if isinstance(typ, list):
            typ = next((t for t in typ if t != "null"), "null")
        if typ is None:
            typ = "object" if "properties" in s else "array" if "items" in s else "string"

        if typ == "object":
            props: dict[str, Any] = s.get("properties", {})
            required = set(s.get("required", props))
            return {
                name: self.make(sub, depth + 1)
                for name, sub in props.items()
                if depth < _MAX_DEPTH or name in required
            }
        if typ == "array":
            lo = s.get("minItems", 1 if s.get("maxItems", 1) >= 1 else 0)
            hi = s.get("maxItems", max(5, lo))
            n = lo if depth >= _MAX_DEPTH else rng.randint(lo, hi)
            return [self.make(s.get("items", {}), depth + 1) for _ in range(n)]
        if typ in ("integer", "number"):
            return self._number(s, integer=typ == "integer")
        if typ == "boolean":
            return rng.random() < 0.5
        if typ == "null":
            return None
        if s.get("format") in _FORMAT_EXAMPLES:
            return _FORMAT_EXAMPLES[s["format"]]
        text = " ".join(rng.choice(_VOCAB) for _ in range(rng.randint(2, 5)))
        min_len, max_len = s.get("minLength", 0), s.get("maxLength")
        while len(text) < min_len:
            text += " " + rng.choice(_VOCAB)
        if max_len is not None:
            text = text[:max_len]
        return text.ljust(min_len, "a")

    def _number(self, s: dict[str, Any], *, integer: bool) -> int | float:
        step = 1 if integer else 1e-6
        lo, hi = s.get("minimum"), s.get("maximum")
        # Only the draft-6+ numeric form of exclusiveMinimum/Maximum; the draft-4 boolean form is rare.
        if lo is None and _is_number(s.get("exclusiveMinimum")):
            lo = s["exclusiveMinimum"] + step
        if hi is None and _is_number(s.get("exclusiveMaximum")):
            hi = s["exclusiveMaximum"] - step
        if lo is None:
            lo = min(100, hi) if hi is not None else 100
        if hi is None:
            hi = max(500, lo)
        hi = max(lo, hi)
        if integer:
            return self.rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi)))
        return min(hi, max(lo, round(self.rng.uniform(lo, hi), 2)))


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _extract_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema of a response_format in llama.cpp or OpenAI form, if any."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object" and isinstance(response_format.get("schema"), dict):
        return response_format["schema"]
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema")
        if isinstance(inner, dict) and isinstance(inner.get("schema"), dict):
            return inner["schema"]
    return None


def _prompt_word_list(messages: Any) -> list[str]:
    """The words of every message's content, in order (roles and message boundaries are not words)."""
    out: list[str] = []
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            out += content.split()
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    out += part["text"].split()
    return out


def _prompt_words(messages: Any) -> int:
    return len(_prompt_word_list(messages))


def prefix_hashes(words: list[str], block: int = 1) -> list[int]:
    """A hash of every prefix of ``words`` whose length is a multiple of ``block`` (prefix i*block, i = 1...)."""
    out, h = [], 0
    for i, w in enumerate(words, start=1):
        h = hash((h, w))
        if i % block == 0:
            out.append(h)
    return out


class _HTTPServer(ThreadingHTTPServer):
    # Daemon handler threads so a "hang" in flight never blocks interpreter exit or stop().
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response is the normal case here (timeouts, drops), not a bug.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, keep-alive requests stall ~40 ms each.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request stderr lines would drown test output

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/").removeprefix("/v1")
        fake = self.server.fake
        if path == "/models":
            model = {"id": fake.model, "object": "model", "created": 0, "owned_by": "fake"}
            self.send_json(200, {"object": "list", "data": [model]})
        elif path == "/batches":
            self.send_json(200, fake._list_batches())
        elif path.startswith("/batches/"):
            fake._retrieve_batch(self, path.removeprefix("/batches/"))
        elif path.startswith("/files/") and path.endswith("/content"):
            fake._file_content(self, path.removeprefix("/files/").removesuffix("/content"))
        else:
            self.send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error", None))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0].rstrip("/").removeprefix("/v1")
        fake = self.server.fake
        if path == "/chat/completions":
            fake._handle_chat(self, raw)
        elif path == "/files":
            fake._upload_file(self, raw)
        elif path == "/batches":
            fake._create_batch(self, raw)
        elif path.startswith("/batches/") and path.endswith("/cancel"):
            fake._cancel_batch(self, path.removeprefix("/batches/").removesuffix("/cancel"))
        else:
            self.send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error", None))


class FakeOpenAIServer:
    """OpenAI-compatible fake on 127.0.0.1 that injects faults and logs every chat request.

    faults: fault name -> probability per request (sum <= 1), drawn from a Random(seed).
    script: outcomes ("ok" or a fault name) consumed in order before `faults` applies.
    replies: message contents served in order, one per "ok" completion, before the generated content; an
        entry may be a (content, finish_reason) pair, e.g. ("The harbour was", "length") for a cut-off reply.
    context_words: a prompt of more words than this is refused with HTTP 400 ("maximum context length").
    batch_polls: retrievals of a batch that find it "in_progress" before it finishes (the Batch API).
    batch_outcomes: how the batches created run, in order (then "complete"): "complete" answers every line
        (each line drawing its outcome from `script`/`faults`: a fault becomes an error line), "expire:N"
        answers the first N lines and expires the rest, "fail" fails the batch's validation (no line runs).
    batch_retrieve_errors: the first this many retrievals of a batch (any batch) answer HTTP 500.
    prefix_cache: report ``usage.prompt_tokens_details.cached_tokens`` as a server with a prefix cache does
        (OpenAI, vLLM): the longest word prefix a prompt shares with any prompt answered before (every message's
        words in order, by ``str.split``, roles left out), in whole blocks of ``prefix_cache_block`` words, as
        tokens by this server's own count (``approx_tokens``), rounded down to a multiple of
        ``prefix_cache_step`` tokens, and 0 below ``prefix_cache_min`` tokens. OpenAI's rule is step 128, min
        1024. Off (the default): usage has no ``prompt_tokens_details``, as llama.cpp's server.
    """

    def __init__(
        self,
        *,
        faults: dict[str, float] | None = None,
        script: list[str] | None = None,
        seed: int = 0,
        words: int = 120,
        base_latency_s: float = 0.0,
        tokens_per_s: float | None = None,
        capacity: int | None = None,
        hang_s: float = 30.0,
        retry_after_s: float = 0.0,
        require_key: str | None = None,
        model: str = "fake-model",
        log_path: str | Path | None = None,
        port: int = 0,
        backlog: int = 128,
        replies: list[str | tuple[str, str]] | None = None,
        context_words: int | None = None,
        batch_polls: int = 2,
        batch_outcomes: list[str] | None = None,
        batch_retrieve_errors: int = 0,
        prefix_cache: bool = False,
        prefix_cache_step: int = 1,
        prefix_cache_min: int = 0,
        prefix_cache_block: int = 1,
    ) -> None:
        faults = dict(faults or {})
        script = list(script or [])
        unknown = (set(faults) | set(script)) - set(FAULTS) - {"ok"}
        if unknown:
            raise ValueError(f"unknown fault names {sorted(unknown)}; known: {FAULTS}")
        if any(p < 0 for p in faults.values()) or sum(faults.values()) > 1 + 1e-9:
            raise ValueError(f"fault probabilities must be >= 0 and sum to <= 1: {faults}")
        self.faults = faults
        self.seed = seed
        self.words = words
        self.base_latency_s = base_latency_s
        self.tokens_per_s = tokens_per_s
        self.hang_s = hang_s
        self.retry_after_s = retry_after_s
        self.require_key = require_key
        self.model = model
        self.log_path = Path(log_path) if log_path is not None else None
        self.port = port
        # listen() backlog, deep like a real inference server's: socketserver's default of 5 drops SYNs when
        # more clients connect at once, and each dropped connect then waits ~1 s for the SYN retransmit
        self.backlog = backlog
        self.context_words = context_words
        self.log: list[dict[str, Any]] = []
        # every request body received, in order (in memory only: what a test asserts a client sent)
        self.bodies: list[dict[str, Any]] = []
        self._script = script
        self._replies = list(replies or [])
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # An inference server runs a fixed number of slots; the rest of the requests queue.
        self._capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.batch_polls = batch_polls
        if prefix_cache_step < 1 or prefix_cache_block < 1 or prefix_cache_min < 0:
            raise ValueError("prefix_cache_step and prefix_cache_block must be >= 1, prefix_cache_min >= 0")
        self.prefix_cache = prefix_cache
        self.prefix_cache_step = prefix_cache_step
        self.prefix_cache_min = prefix_cache_min
        self.prefix_cache_block = prefix_cache_block
        # hashes of the (block-aligned) word prefixes of every prompt answered so far: the prefix cache
        self._prefixes: set[int] = set()
        self.batch_retrieve_errors = batch_retrieve_errors
        self._batch_outcomes = list(batch_outcomes or [])
        # the Batch API's state: uploaded files (id -> bytes) and batches (id -> the Batch object as JSON)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._batch_polls_seen: Counter[str] = Counter()
        self._ids = itertools.count(1)
        # Set on stop() so hangs and latency sleeps end at once instead of outliving the test.
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAIServer not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        server_cls = type("_HTTPServer", (_HTTPServer,), {"request_queue_size": self.backlog})
        httpd = server_cls(("127.0.0.1", self.port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        # A short poll interval keeps shutdown() (and so stop()) quick.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request log -------------------------------------------------------------------------

    def paid_calls(self) -> dict[str, int]:
        """Request key -> number of requests that got a full answer (what a real API bills)."""
        with self._lock:
            return dict(Counter(e["key"] for e in self.log if e["outcome"] == "ok"))

    def requests_count(self) -> int:
        with self._lock:
            return len(self.log)

    def _record(self, key: str, outcome: str, prompt_tokens: int, completion_tokens: int,
                cached_tokens: int = 0) -> None:
        entry = {
            "key": key,
            "outcome": outcome,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens,
            "t": time.time(),
        }
        with self._lock:
            self.log.append(entry)
            if self.log_path is not None:
                # Reopened per entry so the file is complete even if the process is killed.
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")

    def _next_outcome(self) -> str:
        with self._lock:
            if self._script:
                return self._script.pop(0)
            r = self._rng.random()
            acc = 0.0
            for name, p in self.faults.items():
                acc += p
                if r < acc:
                    return name
            return "ok"

    # -- chat completions --------------------------------------------------------------------

    def cached_tokens_for(self, body: dict[str, Any]) -> int | None:
        """The prompt tokens of ``body`` its prefix cache holds (see ``prefix_cache``), and the prompt added to
        that cache; None when the server has no prefix cache."""
        if not self.prefix_cache:
            return None
        words = _prompt_word_list(body.get("messages"))
        hashes = prefix_hashes(words, self.prefix_cache_block)
        with self._lock:
            seen = 0
            for h in hashes:
                if h not in self._prefixes:
                    break
                seen += 1
            self._prefixes.update(hashes)
        tokens = approx_tokens(seen * self.prefix_cache_block) // self.prefix_cache_step * self.prefix_cache_step
        return min(tokens, approx_tokens(len(words))) if tokens >= self.prefix_cache_min else 0

    def _completion(self, key: str, body: dict[str, Any]) -> tuple[str, str]:
        """Deterministic (content, finish_reason) for a request body."""
        rng = random.Random(int(key[:16], 16) ^ self.seed)
        schema = _extract_schema(body.get("response_format"))
        if schema is not None:
            return json.dumps(_SchemaFaker(schema, rng).make(schema), ensure_ascii=False), "stop"
        n_words = self.words
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        finish = "stop"
        if isinstance(max_tokens, int) and n_words * 4 / 3 > max_tokens:
            # cut where the token limit falls, in mid-sentence as a real server does
            cut = int(max_tokens * 0.75)
            return " ".join(fake_text(rng, n_words).split()[:cut]), "length"
        return fake_text(rng, n_words), finish

    def _handle_chat(self, h: _Handler, raw: bytes) -> None:
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as e:
            self._record(hashlib.sha256(raw).hexdigest(), "400", 0, 0)
            h.send_json(400, _error_body(f"Invalid JSON body: {e}", "invalid_request_error", None))
            return
        key = request_key(body)
        with self._lock:
            self.bodies.append(body)
        prompt_tokens = approx_tokens(_prompt_words(body.get("messages")))

        if self.require_key is not None and h.headers.get("Authorization") != f"Bearer {self.require_key}":
            self._record(key, "401", prompt_tokens, 0)
            h.send_json(
                401, _error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            )
            return
        if body.get("stream"):
            self._record(key, "400", prompt_tokens, 0)
            h.send_json(
                400,
                _error_body("This fake server does not support streaming.", "invalid_request_error", None),
            )
            return

        n_words = _prompt_words(body.get("messages"))
        if self.context_words is not None and n_words > self.context_words:
            self._record(key, "400", prompt_tokens, 0)
            msg = (
                f"This model's maximum context length is {approx_tokens(self.context_words)} tokens. "
                f"However, your messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
            )
            h.send_json(400, _error_body(msg, "invalid_request_error", "context_length_exceeded"))
            return

        outcome = self._next_outcome()
        if outcome != "ok":
            # Logged before acting so a test sees the entry as soon as its client call returns.
            self._record(key, outcome, prompt_tokens, 0)
            self._inject(h, outcome, key, body)
            return

        with self._lock:
            reply = self._replies.pop(0) if self._replies else None
        reply_finish = "stop"
        if isinstance(reply, tuple | list):
            reply, reply_finish = reply
        content, finish = (reply, reply_finish) if reply is not None else self._completion(key, body)
        completion_tokens = approx_tokens(len(content.split()))
        delay = self.base_latency_s + (completion_tokens / self.tokens_per_s if self.tokens_per_s else 0.0)
        with self._capacity or contextlib.nullcontext():
            if delay > 0:
                self._stopping.wait(delay)
        cached = self.cached_tokens_for(body)
        self._record(key, "ok", prompt_tokens, completion_tokens, cached or 0)
        h.send_json(200, self._chat_body(key, body, content, finish, prompt_tokens, completion_tokens, cached))

    def _chat_body(self, key: str, body: dict[str, Any], content: str, finish: str, prompt_tokens: int,
                   completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        return {
            "id": f"chatcmpl-{key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }

    # -- the Batch API: files and batches ------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids):06d}"

    def _upload_file(self, h: _Handler, raw: bytes) -> None:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + h.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in message.iter_parts()}
        if "file" not in fields or fields.get("purpose") != b"batch":
            h.send_json(400, _error_body("expected multipart fields 'file' and purpose=batch",
                                         "invalid_request_error", None))
            return
        file_id = self._new_id("file")
        with self._lock:
            self.files[file_id] = fields["file"]
        h.send_json(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]),
                          "created_at": int(time.time()), "filename": "batch.jsonl", "purpose": "batch",
                          "status": "processed"})

    def _file_content(self, h: _Handler, file_id: str) -> None:
        with self._lock:
            data = self.files.get(file_id)
        if data is None:
            h.send_json(404, _error_body(f"No such File object: {file_id}", "invalid_request_error", None))
        else:
            h.send_bytes(200, data, "application/octet-stream")

    def _create_batch(self, h: _Handler, raw: bytes) -> None:
        params = json.loads(raw)
        with self._lock:
            known = params.get("input_file_id") in self.files
        if not known:
            h.send_json(400, _error_body("input_file_id is not an uploaded file", "invalid_request_error", None))
            return
        batch_id = self._new_id("batch")
        lines = self.files[params["input_file_id"]].decode("utf-8").splitlines()
        batch = {"id": batch_id, "object": "batch", "endpoint": params.get("endpoint"), "errors": None,
                 "input_file_id": params["input_file_id"], "completion_window": params.get("completion_window"),
                 "status": "validating", "output_file_id": None, "error_file_id": None,
                 "created_at": int(time.time()), "metadata": params.get("metadata"),
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        with self._lock:
            self.batches[batch_id] = batch
        h.send_json(200, batch)

    def _list_batches(self) -> dict[str, Any]:
        with self._lock:
            data = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)  # newest first
        return {"object": "list", "data": data, "has_more": False,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    def _cancel_batch(self, h: _Handler, batch_id: str) -> None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is not None and batch["status"] in ("validating", "in_progress"):
                batch["status"] = "cancelled"
        if batch is None:
            h.send_json(404, _error_body(f"No batch {batch_id}", "invalid_request_error", None))
        else:
            h.send_json(200, batch)

    def _retrieve_batch(self, h: _Handler, batch_id: str) -> None:
        with self._lock:
            failing = self.batch_retrieve_errors > 0
            self.batch_retrieve_errors -= failing
        if failing:
            h.send_json(500, _error_body("The server had an error while processing your request.", "server_error",
                                         None))
            return
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is not None:
                self._batch_polls_seen[batch_id] += 1
                polls = self._batch_polls_seen[batch_id]
        if batch is None:
            h.send_json(404, _error_body(f"No batch {batch_id}", "invalid_request_error", None))
            return
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and polls > self.batch_polls:
            self._run_batch(batch)
        h.send_json(200, batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        """Answer a batch's lines as chat requests are answered, then write its output and error files."""
        with self._lock:
            how = self._batch_outcomes.pop(0) if self._batch_outcomes else "complete"
        if how == "fail":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the input file is not valid", "line": 1}]})
            return
        runs = None if how == "complete" else int(how.split(":")[1])
        out, err = [], []
        for i, line in enumerate(self.files[batch["input_file_id"]].decode("utf-8").splitlines()):
            item = json.loads(line)
            body, custom_id = item["body"], item["custom_id"]
            line_id = f"batch_req_{i}"
            if runs is not None and i >= runs:
                err.append({"id": line_id, "custom_id": custom_id, "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}})
                continue
            key = request_key(body)
            prompt_tokens = approx_tokens(_prompt_words(body.get("messages")))
            outcome = self._next_outcome()
            if outcome != "ok":  # a fault on a line: the line fails with a server error, the rest go on
                self._record(key, outcome, prompt_tokens, 0)
                status = 429 if outcome == "429" else 500
                err.append({"id": line_id, "custom_id": custom_id, "error": None, "response": {
                    "status_code": status, "request_id": line_id,
                    "body": _error_body("The server had an error processing the request.", "server_error", None)}})
                continue
            content, finish = self._completion(key, body)
            completion_tokens = approx_tokens(len(content.split()))
            cached = self.cached_tokens_for(body)
            self._record(key, "ok", prompt_tokens, completion_tokens, cached or 0)
            out.append({"id": line_id, "custom_id": custom_id, "error": None, "response": {
                "status_code": 200, "request_id": line_id,
                "body": self._chat_body(key, body, content, finish, prompt_tokens, completion_tokens, cached)}})
        for name, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                file_id = self._new_id("file")
                with self._lock:
                    self.files[file_id] = "".join(json.dumps(x) + "\n" for x in lines).encode("utf-8")
                batch[name] = file_id
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        batch["status"] = "completed" if runs is None else "expired"

    def _inject(self, h: _Handler, fault: str, key: str, body: dict[str, Any]) -> None:
        if fault == "429":
            h.send_json(
                429,
                _error_body("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
                {"Retry-After": f"{self.retry_after_s:g}"},
            )
        elif fault in ("500", "503"):
            msg = (
                "The server had an error while processing your request."
                if fault == "500"
                else "The server is overloaded or not ready yet."
            )
            h.send_json(int(fault), _error_body(msg, "server_error", None))
        elif fault == "hang":
            self._stopping.wait(self.hang_s)
            h.close_connection = True
        elif fault == "drop":
            # Returning without writing anything makes the server close the socket: no status line at all.
            h.close_connection = True
        elif fault == "malformed":
            data = b'{"id": "x", "choices": ['
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        elif fault == "truncated":
            content, finish = self._completion(key, body)
            data = json.dumps(
                {
                    "id": f"chatcmpl-{key[:24]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": finish,
                        }
                    ],
                }
            ).encode("utf-8")
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))  # promises the full body ...
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])  # ... and delivers half, like a server killed mid-write
            h.wfile.flush()
            h.close_connection = True


def _parse_faults(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, p = item.partition("=")
        out[name.strip()] = float(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fault-injecting fake OpenAI server on 127.0.0.1.")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help=f"total fault probability, spread evenly over {', '.join(FAULTS)}",
    )
    p.add_argument(
        "--faults", default="", help='explicit mix, e.g. "429=0.1,drop=0.05" (overrides --fault-rate)'
    )
    p.add_argument("--script", default="", help='comma-separated outcomes served first, e.g. "429,ok,drop"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--words", type=int, default=120)
    p.add_argument("--latency", type=float, default=0.0, help="base latency per answer, seconds")
    p.add_argument("--tokens-per-s", type=float, default=None)
    p.add_argument("--capacity", type=int, default=None)
    p.add_argument("--hang-s", type=float, default=30.0)
    p.add_argument("--retry-after", type=float, default=0.0)
    p.add_argument("--require-key", default=None)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--log", default=None, help="append one JSON line per request here")
    p.add_argument("--backlog", type=int, default=128, help="listen() backlog")
    p.add_argument("--context-words", type=int, default=None, help="refuse longer prompts with HTTP 400")
    p.add_argument("--prefix-cache", action="store_true",
                   help="report usage.prompt_tokens_details.cached_tokens (a prefix cache; see FakeOpenAIServer)")
    p.add_argument("--prefix-cache-step", type=int, default=1, help="cached tokens in steps of this (OpenAI: 128)")
    p.add_argument("--prefix-cache-min", type=int, default=0, help="no cached tokens below this (OpenAI: 1024)")
    p.add_argument("--prefix-cache-block", type=int, default=1, help="prefixes kept every this many words")
    a = p.parse_args(argv)

    faults = _parse_faults(a.faults) if a.faults else {f: a.fault_rate / len(FAULTS) for f in FAULTS}
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with FakeOpenAIServer(
        faults={k: v for k, v in faults.items() if v > 0},
        script=[s.strip() for s in a.script.split(",") if s.strip()],
        seed=a.seed,
        words=a.words,
        base_latency_s=a.latency,
        tokens_per_s=a.tokens_per_s,
        capacity=a.capacity,
        hang_s=a.hang_s,
        retry_after_s=a.retry_after,
        require_key=a.require_key,
        model=a.model,
        log_path=a.log,
        port=a.port,
        backlog=a.backlog,
        context_words=a.context_words,
        prefix_cache=a.prefix_cache,
        prefix_cache_step=a.prefix_cache_step,
        prefix_cache_min=a.prefix_cache_min,
        prefix_cache_block=a.prefix_cache_block,
    ) as srv:
        print(srv.base_url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
