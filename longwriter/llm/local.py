"""``provider: local``: a checkpoint directory (e.g. what ``sft`` trained) served on loopback for a stage.

With vLLM installed and a GPU present, vLLM's OpenAI-compatible server runs it as a child process. Otherwise
llama.cpp's ``llama-server`` does, on the CPU: the checkpoint is converted to a GGUF once (llama.cpp's own
``convert_hf_to_gguf.py``, cached by the checkpoint's content hash and the precision, ``ModelSpec.gguf_outtype``)
and served with ``max_batch`` parallel slots and continuous batching. Either way the stage talks to it through the
shared client, so the response cache, retries and token accounting are the same as for every other model.

llama-server honours every field the client sends (``longwriter.llm.client``): ``temperature``, ``top_p``,
``top_k`` (an extra body field), ``max_tokens``, ``seed``, ``frequency_penalty`` and ``presence_penalty`` (as
llama.cpp defines them: over the last ``penalty_last_n`` tokens of the context, as the embedded server) and
``response_format`` with a JSON schema (decoded under its grammar, which llama.cpp checks on the token it drew
first: what ``llm/llama_server.py`` patches into llama-cpp-python). It is started with OpenAI's defaults
for what the client does not send (no top-k, no min-p, no repeat penalty), so a request means what it says on
OpenAI's API. Prompt caching is off: a reply depends on the request and on which requests share its batch
(bench/results/local_serving.json: 24 of 32 greedy answers identical to one-at-a-time serving, 7 more differing
in a last character cut by the token limit), not also on what the slot evaluated before.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import IO

from longwriter.errors import ConfigError, LongwriterError
from longwriter.llm.spec import ModelSpec


def use_vllm() -> bool:
    """vLLM serves local checkpoints when it is installed and CUDA is available."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def gguf_identity(checkpoint: Path, spec: ModelSpec) -> str:
    """What answers for a checkpoint served by llama-server: its weights, the precision they are converted to,
    the llama.cpp that converts and serves them, and the penalties' window."""
    from longwriter.llm.llama_cpp_engine import engine_version

    window = "" if spec.penalty_last_n == 64 else f":penalty_last_n-{spec.penalty_last_n}"
    return (f"local:{checkpoint_identity(str(checkpoint))}:llama.cpp-{engine_version()}-{spec.gguf_outtype}"
            f"{window}")


def converted_gguf(checkpoint: Path, outtype: str, cache_dir: Path) -> Path:
    """``checkpoint`` as a GGUF of ``outtype``, converted by llama.cpp's converter on first need and kept in
    ``cache_dir/gguf/`` under the checkpoint's content hash (a retrained checkpoint is converted again)."""
    from filelock import FileLock

    from longwriter.llm.llama_cpp_engine import converter, engine_version

    out_dir = cache_dir / "gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{checkpoint_identity(str(checkpoint))}-{outtype}-{engine_version()}.gguf"
    with FileLock(str(target) + ".lock"):  # two stages (or test workers) converting the same weights
        if target.is_file():
            return target
        script, gguf_py = converter()
        partial = target.with_suffix(".partial")
        log_path = out_dir / "convert.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(gguf_py),
                                                                           os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        with log_path.open("ab") as log:
            done = subprocess.run([sys.executable, str(script), str(checkpoint), "--outtype", outtype,
                                   "--outfile", str(partial)], stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            from longwriter.llm.server import _tail

            raise LongwriterError(f"llama.cpp could not convert checkpoint {checkpoint} to GGUF ({outtype}); its "
                                  f"converter's log ({log_path}) ends with:\n{_tail(log_path)}")
        os.replace(partial, target)
        print(f"converted {checkpoint} to {target.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return target


def llama_server_command(binary: Path, gguf: Path, alias: str, port: int, spec: ModelSpec) -> list[str]:
    """llama-server's command line for ``spec``: ``max_batch`` slots of ``n_ctx`` tokens each."""
    threads = str(spec.n_threads or len(os.sched_getaffinity(0)) or 1)
    return [str(binary), "-m", str(gguf), "-a", alias, "--host", "127.0.0.1", "--port", str(port),
            "-t", threads, "-tb", threads, "-c", str(spec.n_ctx * spec.max_batch), "-np", str(spec.max_batch),
            "--cont-batching", "-fa", "on", "--no-webui", "--jinja",
            # OpenAI's meaning of a request that leaves these out (llama.cpp's own defaults: top-k 40, min-p 0.05)
            "--temp", "1.0", "--top-p", "1.0", "--top-k", "0", "--min-p", "0.0", "--repeat-penalty", "1.0",
            "--repeat-last-n", str(spec.penalty_last_n),
            # a reply must not depend on what a slot evaluated before (see the module's docstring)
            "--no-cache-prompt", "--cache-ram", "0"]


@contextlib.contextmanager
def llama_cpp_server(checkpoint: Path, alias: str, spec: ModelSpec, cache_dir: Path,
                     start_timeout_s: float) -> Iterator[str]:
    """llama-server for ``checkpoint`` (converted first) as a child process (``spawn_server``); yields the base
    URL once the model is loaded."""
    from longwriter.llm.llama_cpp_engine import server_binary
    from longwriter.llm.server import _free_port

    binary = server_binary()
    gguf = converted_gguf(checkpoint, spec.gguf_outtype, cache_dir)
    port = _free_port()
    with serving(llama_server_command(binary, gguf, alias, port, spec), f"llama-server for {checkpoint}",
                 port, cache_dir / "llama-server.log", start_timeout_s, poll_s=0.2) as base_url:
        yield base_url


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


@contextlib.contextmanager
def serving(cmd: list[str], what: str, port: int, log_path: Path, start_timeout_s: float,
            poll_s: float, when_ready: Callable[[str, subprocess.Popen], None] | None = None) -> Iterator[str]:
    """``cmd`` as a server child (``spawn_server``) on ``port``, logging to ``log_path``; yields its base URL once
    ``/v1/models`` answers (llama-server says 503 while it loads), stops it when the block ends. A child that
    exits first, or does not answer within ``start_timeout_s``, is an error quoting its log's tail.
    ``when_ready(base_url, process)`` runs before the URL is yielded (the embedded server's smoke test)."""
    from longwriter.llm.server import _ready, _tail

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = spawn_server(cmd, log)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _ready(base_url):
            if proc.poll() is not None:
                raise LongwriterError(f"{what} exited with code {proc.returncode} before answering; its log "
                                      f"({log_path}) ends with:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise LongwriterError(f"{what} did not answer within {start_timeout_s:.0f} s "
                                      f"(llm.server_start_timeout_s); its log ({log_path}) ends with:\n"
                                      f"{_tail(log_path)}")
            time.sleep(poll_s)
        if when_ready is not None:
            when_ready(base_url, proc)
        yield base_url
    finally:
        stop_server(proc)


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
    from longwriter.llm.server import _free_port

    port = _free_port()
    with serving(vllm_command(path, alias, port, spec), f"vLLM server for {path}", port,
                 Path(log_dir) / "vllm-server.log", start_timeout_s, poll_s=1.0) as base_url:
        yield base_url


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
