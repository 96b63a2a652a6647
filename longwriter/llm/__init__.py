"""The LLM client package: model specs, the embedded llama.cpp server, the response cache, the client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from longwriter.errors import ConfigError
from longwriter.llm.cache import ResponseCache
from longwriter.llm.client import BudgetExhausted, CallStats, Completion, Endpoint, LLMCallError, LLMClient
from longwriter.llm.server import DEFAULT_ALIAS, embedded_identity, embedded_server
from longwriter.llm.spec import ClientSettings, ModelSpec, Sampling

__all__ = ["BudgetExhausted", "CallStats", "ClientSettings", "Completion", "Endpoint", "LLMCallError", "LLMClient",
           "ModelSpec", "ResponseCache", "Sampling", "open_endpoint", "run_with_llm"]

T = TypeVar("T")


def _api_key(spec: ModelSpec) -> str:
    # The one place a secret is read; it travels only inside Endpoint (repr=False), never into keys or logs.
    if not spec.api_key_env:
        return "not-needed"
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise ConfigError(f"model '{spec.model}': environment variable {spec.api_key_env} is not set")
    return key


@contextlib.contextmanager
def open_endpoint(spec: ModelSpec, settings: ClientSettings) -> Iterator[Endpoint]:
    """Make ``spec`` reachable for the duration of the block (the embedded server starts on first need)."""
    if spec.provider == "embedded":
        identity = spec.cache_identity(embedded_identity(spec))
        with contextlib.ExitStack() as running:
            def start() -> str:
                return running.enter_context(
                    embedded_server(spec, settings.cache_path, settings.server_start_timeout_s))
            # started lazily by the client: a stage whose calls are all cached never starts a server
            yield Endpoint(None, spec.model or DEFAULT_ALIAS, identity, spec.resolved_structured_output(),
                           start=start)
    elif spec.provider == "local":
        from longwriter.llm.local import (
            checkpoint_identity,
            gguf_identity,
            llama_cpp_server,
            local_model_path,
            use_vllm,
            vllm_server,
        )

        path = local_model_path(spec)
        alias = spec.model or "local"
        vllm = use_vllm()  # decided once: the identity depends on the engine
        if vllm:
            identity = f"local:{checkpoint_identity(str(path))}"
            if spec.vllm_max_model_length is not None:
                # the served context decides which requests vLLM refuses (spec.py); the GPU count and memory
                # share change no answer and stay out of the identity
                identity += f":max_model_length-{spec.vllm_max_model_length}"
        else:
            identity = gguf_identity(path, spec)
        with contextlib.ExitStack() as running:
            def start_local() -> str:
                if vllm:
                    return running.enter_context(vllm_server(path, alias, spec, settings.cache_path,
                                                             settings.server_start_timeout_s))
                return running.enter_context(llama_cpp_server(path, alias, spec, settings.cache_path,
                                                              settings.server_start_timeout_s))
            yield Endpoint(None, alias, spec.cache_identity(identity), spec.resolved_structured_output(),
                           start=start_local)
    elif spec.provider == "answers":
        from longwriter.llm.saved_answers import load_saved_answers

        assert spec.path
        saved = load_saved_answers(spec.path)
        yield Endpoint(None, spec.model or Path(spec.path).stem, spec.cache_identity(f"answers:{saved.digest}"),
                       spec.resolved_structured_output(), answers=saved)
    else:
        assert spec.base_url and spec.model
        base = spec.base_url.rstrip("/")
        yield Endpoint(base, spec.model, spec.cache_identity(f"openai:{base}:{spec.model}"),
                       spec.resolved_structured_output(),
                       api_key=_api_key(spec), price_input_per_mtok=spec.price_input_per_mtok or 0.0,
                       price_output_per_mtok=spec.price_output_per_mtok or 0.0, rpm=spec.rpm, tpm=spec.tpm,
                       batch=spec.batch, batch_discount=spec.batch_discount,
                       price_cached_input_per_mtok=spec.price_cached_input_per_mtok)


def run_with_llm(spec: ModelSpec, settings: ClientSettings,
                 work: Callable[[LLMClient], Awaitable[T]]) -> tuple[T, CallStats]:
    """Run ``work(client)`` in an event loop with a client for ``spec``; return its result and call stats."""
    if spec.provider == "local":  # a batching backend: keep a whole batch in flight
        settings = dataclasses.replace(settings, max_concurrency=max(settings.max_concurrency, spec.max_batch))
    with open_endpoint(spec, settings) as endpoint, \
            ResponseCache(settings.cache_path / "responses.sqlite") as cache:
        stopped: list[int] = []

        async def main() -> tuple[T, CallStats]:
            # SIGTERM cancels the work as Ctrl-C does inside asyncio.run: the stage's own handler would raise
            # KeyboardInterrupt in whichever task happens to run, which leaves that task's error unretrieved
            # and printed as a traceback.
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            assert task is not None
            previous = signal.getsignal(signal.SIGTERM)

            def stop() -> None:
                stopped.append(signal.SIGTERM)
                task.cancel()
            loop.add_signal_handler(signal.SIGTERM, stop)
            try:
                async with LLMClient(endpoint, cache, settings) as llm:
                    return await work(llm), llm.stats
            finally:
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, previous)
        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            if stopped:
                raise KeyboardInterrupt(f"signal {stopped[0]}") from None
            raise
