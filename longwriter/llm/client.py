"""The one LLM client: AsyncOpenAI for every provider, with a cache, bounded concurrency and retries.

Every stage calls ``LLMClient.complete``. A call is answered from the response cache when the same request
(model identity, messages, sampling, schema, seed, sample index) completed before; otherwise it is sent
with at most ``max_concurrency`` requests in flight (and within the spec's requests and tokens per minute),
retried by tenacity with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
unreadable bodies, and stored the moment it succeeds. After ``max_retries`` retries it raises
``LLMCallError`` carrying the last error, which stages record as a failed row. With a spec's ``batch: true``
the calls the cache cannot answer go out as OpenAI Batch API jobs instead (``longwriter.llm.batch``). Paid
calls are priced from the spec; once a stage's spend reaches ``llm.max_cost_usd`` no new request is sent
(``BudgetExhausted``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from longwriter.errors import LongwriterError
from longwriter.llm.batch import Answer, BatchRunner, cached_prompt_tokens
from longwriter.llm.cache import ResponseCache, request_key
from longwriter.llm.spec import ClientSettings, Sampling

if TYPE_CHECKING:
    import openai

    from longwriter.llm.saved_answers import SavedAnswers

# Client errors that retrying cannot fix (bad request, bad key, unknown model).
_FATAL_STATUS = {400, 401, 403, 404, 422}
# Hosts whose API refuses parameters it does not know (HTTP 400 "Unrecognized request argument"): top_k is
# left out of requests to them. llama.cpp, vLLM and the local server take it.
_NO_TOP_K_HOSTS = ("api.openai.com", ".openai.azure.com")
# rpm and tpm are per minute; the tests shorten the window rather than wait minutes
_LIMIT_WINDOW_S = 60.0
# a request's tokens for the tpm limit, before the reply says: its characters / 4 (OpenAI's own estimate of
# prompt tokens) plus max_tokens, as OpenAI's rate limiter counts it
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server for one model spec.

    ``base_url`` may be None with a ``start`` callable that brings the server up and returns its URL: the
    client calls it on the first request the cache cannot answer, so a fully cached rerun starts nothing.
    """

    base_url: str | None
    model: str
    identity: str  # what the cache key uses: never the URL of an ephemeral port, never the key
    structured_output: str  # json_schema | json_object | none
    api_key: str = field(default="not-needed", repr=False)
    start: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    # dollars per million prompt / completion tokens (0: a local backend, or no prices given)
    price_input_per_mtok: float = 0.0
    price_output_per_mtok: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    # calls go out as OpenAI Batch API jobs (longwriter.llm.batch), billed at the prices less batch_discount
    batch: bool = False
    batch_discount: float = 0.0
    # dollars per million prompt tokens the backend reports as cached; None: price_input_per_mtok
    price_cached_input_per_mtok: float | None = None
    # provider answers: the saved answers that answer every call (nothing is sent, nothing is cached)
    answers: SavedAnswers | None = field(default=None, repr=False, compare=False)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """A call's price: its uncached prompt tokens at the input price, its cached ones (at most all of the
        prompt) at the cached-input price, its completion at the output price; with the Batch API, less the
        batch discount on the whole."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = (self.price_input_per_mtok if self.price_cached_input_per_mtok is None
                        else self.price_cached_input_per_mtok)
        full = ((prompt_tokens - cached) * self.price_input_per_mtok + cached * cached_price
                + completion_tokens * self.price_output_per_mtok) / 1e6
        return full * (1 - self.batch_discount) if self.batch else full


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool
    attempts: int
    # the prompt tokens the backend reported as cached (usage.prompt_tokens_details.cached_tokens: a prefix it
    # had seen; 0 when it does not say). Stored with the answer, so a replay reports what the call reported
    cached_tokens: int = 0


class BudgetExhausted(LongwriterError):
    """The stage's paid calls reached ``llm.max_cost_usd``: nothing more is sent (the stage stops)."""


class LLMCallError(LongwriterError):
    """A call that still failed after its retries (or could not be retried)."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


@dataclass
class CallStats:
    calls: int = 0
    cache_hits: int = 0
    # calls sent to the backend, not answered from the cache: what an API bills (cost_usd says for how much;
    # a local backend is sent calls too, and they cost nothing)
    sent_calls: int = 0
    retries: int = 0
    failed_calls: int = 0
    # completions (paid or cached) that ended on the token limit (finish_reason "length"): an HTTP 200 reply,
    # accepted and cached, whose text stops mid-sentence
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sent_completion_tokens: int = 0
    # of prompt_tokens, those the backend reported as cached (a prefix it had seen before: OpenAI bills them at
    # the spec's price_cached_input_per_mtok, vLLM skips their prefill); the sent_ figure counts the calls sent
    # only, as sent_completion_tokens does. Not this client's response cache: its hits are cache_hits
    cached_prompt_tokens: int = 0
    sent_cached_prompt_tokens: int = 0
    sent_seconds: float = 0.0
    # US dollars of this client's paid calls, from the spec's prices (0 without prices, and for local backends)
    cost_usd: float = 0.0
    # Batch API jobs read back (a spec with batch: true); their sent_seconds is the wait for each batch
    batches: int = 0

    def as_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out["cache_hit_rate"] = round(self.cache_hits / self.calls, 4) if self.calls else 0.0
        out["sent_seconds"] = round(self.sent_seconds, 2)
        out["cost_usd"] = round(self.cost_usd, 6)
        out["sent_tokens_per_s"] = (round(self.sent_completion_tokens / self.sent_seconds, 1)
                                    if self.sent_seconds else 0.0)
        return out


class LLMClient:
    """Use as ``async with LLMClient(endpoint, cache, settings) as llm: await llm.complete(...)``."""

    def __init__(self, endpoint: Endpoint, cache: ResponseCache, settings: ClientSettings):
        self.endpoint = endpoint
        self.cache = cache
        self.settings = settings
        self.stats = CallStats()
        self._client: openai.AsyncOpenAI | None = None
        self._slots: asyncio.Semaphore | None = None
        self._connecting = asyncio.Lock()
        self._rpm: AsyncLimiter | None = None
        self._tpm: AsyncLimiter | None = None
        self._batch: BatchRunner | None = None

    @property
    def max_in_flight(self) -> int:
        """How many calls a stage should have waiting at once: the concurrency, or with the Batch API a whole
        batch (a stage that bounds its own work by this keeps every call of a round in the round's batch)."""
        return self.settings.batch_max_requests if self.endpoint.batch else self.settings.max_concurrency

    async def __aenter__(self) -> LLMClient:
        self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        if self.endpoint.batch:
            self._batch = BatchRunner(self._connected, self.endpoint.identity, self.cache, self.settings,
                                      before_submit=self._check_budget, on_answer=self._paid_line,
                                      on_batch=self._paid_batch, redact=self._redact, wait=self._wait)
        if self.endpoint.rpm:
            self._rpm = AsyncLimiter(self.endpoint.rpm, _LIMIT_WINDOW_S)
        if self.endpoint.tpm:
            self._tpm = AsyncLimiter(self.endpoint.tpm, _LIMIT_WINDOW_S)
        return self

    async def _connected(self) -> openai.AsyncOpenAI:
        # imported on the first paid call: the SDK's import is most of an LLM stage's start-up, and a stage
        # answered from the response cache (a forced rerun, an experiment) never needs it
        import openai

        async with self._connecting:
            if self._client is None:
                base_url = self.endpoint.base_url
                if base_url is None:
                    assert self.endpoint.start is not None, "an endpoint needs base_url or start"
                    # blocking on purpose: every request waits for the server anyway, and the server must be
                    # started from the main thread (its PDEATHSIG is tied to the starting thread)
                    base_url = self.endpoint.start()
                # the SDK's aiohttp transport: httpx's cost a third of the client's CPU per request, and at 64
                # slots that CPU bounds requests/s (bench/write_makespan.py)
                self._client = openai.AsyncOpenAI(base_url=base_url, api_key=self.endpoint.api_key,
                                                  timeout=self.settings.request_timeout_s, max_retries=0,
                                                  http_client=openai.DefaultAioHttpClient(
                                                      timeout=self.settings.request_timeout_s))
            return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()

    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None or self.endpoint.structured_output == "none":
            return None
        if self.endpoint.structured_output == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}

    async def complete(self, messages: list[dict[str, str]], sampling: Sampling, *,
                       schema: dict[str, Any] | None = None, sample: int = 0) -> Completion:
        """One chat completion; ``sample`` distinguishes repeated draws of the same request."""
        assert self._slots is not None, "use LLMClient as an async context manager"
        if self.endpoint.answers is not None:
            return self._saved(messages, sample)
        response_format = self._response_format(schema)
        request: dict[str, Any] = {
            "messages": messages, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "frequency_penalty": sampling.frequency_penalty, "presence_penalty": sampling.presence_penalty,
            # a distinct seed per sample, so re-asks and best-of-n draws differ even at temperature > 0
            "seed": sampling.seed + sample,
        }
        if response_format is not None:
            request["response_format"] = response_format
        if sampling.top_k is not None and self._takes_top_k():
            # the openai client merges extra_body into the JSON body; absent when None, so a request without
            # top_k (and its cache key) is exactly what it was before top_k existed
            request["extra_body"] = {"top_k": sampling.top_k}
        key = request_key(self.endpoint.identity, {"request": request, "sample": sample})
        self.stats.calls += 1
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return self._account(Completion(**hit, cached=True, attempts=0))
        if self._batch is not None:  # stored and paid for as its batch is read (longwriter.llm.batch)
            return self._account(await self._send_batched(key, request))
        completion = await self._send(request)
        self.cache.put(key, self.endpoint.identity, {
            k: v for k, v in asdict(completion).items() if k not in ("cached", "attempts")})
        self._paid(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens)
        self.stats.sent_seconds += completion.latency_s
        return self._account(completion)

    def _saved(self, messages: list[dict[str, str]], sample: int) -> Completion:
        """The saved answer to the request (provider answers); an unknown prompt is an unanswered call."""
        saved = self.endpoint.answers
        assert saved is not None
        self.stats.calls += 1
        text = saved.answer(messages[-1]["content"], sample)
        if text is None:
            self.stats.failed_calls += 1
            raise LLMCallError(f"unanswered: {saved.source} holds no answer to this prompt (sample {sample})", 0)
        return self._account(Completion(text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=0,
                                        latency_s=0.0, cached=False, attempts=0))

    def _paid(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> None:
        self.stats.sent_calls += 1
        self.stats.sent_completion_tokens += completion_tokens
        self.stats.sent_cached_prompt_tokens += cached_tokens
        cost = self.endpoint.cost_usd(prompt_tokens, completion_tokens, cached_tokens)
        self.stats.cost_usd += cost
        self.settings.spend.usd += cost

    def _paid_line(self, answer: Answer) -> None:
        self._paid(answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens)

    def _paid_batch(self, waited_s: float) -> None:
        self.stats.batches += 1
        self.stats.sent_seconds += waited_s

    async def _send_batched(self, key: str, request: dict[str, Any]) -> Completion:
        """The call in the next batch; a failed or expired line is asked again in the round after."""
        assert self._batch is not None
        error, attempt = "", 0
        for attempt in range(1, self.settings.max_retries + 2):
            if attempt > 1:
                self.stats.retries += 1
            outcome = await self._batch.answer(key, self._body(request))
            if isinstance(outcome, Answer):
                return Completion(**asdict(outcome), cached=False, attempts=attempt)
            error = outcome
        self.stats.failed_calls += 1
        raise LLMCallError(f"gave up after {attempt} batches; last error: {error}", attempt)

    def _check_budget(self) -> None:
        limit, spent = self.settings.max_cost_usd, self.settings.spend.usd
        if limit is not None and spent >= limit:
            raise BudgetExhausted(
                f"llm.max_cost_usd reached: this stage's paid calls cost {spent:.4f} USD of {limit:.4f}; every "
                f"answer so far is cached, so a rerun with a higher llm.max_cost_usd goes on from here")

    async def _throttle(self, request: dict[str, Any]) -> None:
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            chars = sum(len(str(m.get("content") or "")) for m in request["messages"])
            tokens = chars // _CHARS_PER_TOKEN + int(request["max_tokens"])
            await self._tpm.acquire(min(tokens, self._tpm.max_rate))

    def _account(self, c: Completion) -> Completion:
        self.stats.prompt_tokens += c.prompt_tokens
        self.stats.completion_tokens += c.completion_tokens
        self.stats.cached_prompt_tokens += c.cached_tokens
        if c.finish_reason == "length":
            self.stats.truncated += 1
        return c

    def _takes_top_k(self) -> bool:
        # an endpoint started on demand (embedded, local) has no base_url yet: it is llama.cpp or ours
        host = (urlsplit(self.endpoint.base_url).hostname or "") if self.endpoint.base_url else ""
        return not any(host == h or (h.startswith(".") and host.endswith(h)) for h in _NO_TOP_K_HOSTS)

    async def _send(self, request: dict[str, Any]) -> Completion:
        client = await self._connected()
        retrying = AsyncRetrying(stop=stop_after_attempt(self.settings.max_retries + 1), wait=self._wait,
                                 retry=retry_if_exception_type(_Retryable), before_sleep=self._count_retry,
                                 reraise=True)
        completion: Completion | None = None
        try:
            async for attempt in retrying:
                with attempt:
                    completion = await self._attempt(client, request, attempt.retry_state.attempt_number)
        except _Retryable as e:
            self.stats.failed_calls += 1
            raise LLMCallError(f"gave up after {e.attempt} attempts; last error: {e.error}", e.attempt) from None
        except LLMCallError:
            self.stats.failed_calls += 1
            raise
        assert completion is not None
        return completion

    async def _attempt(self, client: openai.AsyncOpenAI, request: dict[str, Any], attempt: int) -> Completion:
        """One request: its Completion, LLMCallError when retrying cannot help, _Retryable when it can."""
        import openai
        from openai.types.chat import ChatCompletion

        assert self._slots is not None
        try:
            async with self._slots:
                self._check_budget()  # in the slot: requests queued behind a full budget are never sent
                await self._throttle(request)
                started = time.perf_counter()
                resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=self._body(request))
                latency = time.perf_counter() - started
            if not resp.choices or resp.choices[0].message is None:
                raise _EmptyResponse("response has no choices")
            choice = resp.choices[0]
            text = choice.message.content
            if text is None:
                raise _EmptyResponse("response message has no content")
            usage = resp.usage
            prompt_tokens = usage.prompt_tokens if usage else 0
            return Completion(
                text=text, finish_reason=choice.finish_reason or "unknown", prompt_tokens=prompt_tokens,
                completion_tokens=usage.completion_tokens if usage else 0,
                latency_s=round(latency, 4), cached=False, attempts=attempt,
                cached_tokens=cached_prompt_tokens(usage, prompt_tokens))
        except (asyncio.CancelledError, BudgetExhausted):
            raise
        except openai.APIStatusError as e:
            error = self._redact(f"HTTP {e.status_code}: {_short(e)}")
            if e.status_code in _FATAL_STATUS:
                raise LLMCallError(error, attempt) from None
            raise _Retryable(error, attempt, _retry_after(e)) from None
        except Exception as e:  # timeouts, dropped connections, malformed bodies, empty answers
            raise _Retryable(self._redact(f"{type(e).__name__}: {_short(e)}"), attempt) from None

    def _body(self, request: dict[str, Any]) -> dict[str, Any]:
        # the request as JSON, as chat.completions.create would send it: that method's typed-dict transform of
        # an already plain body cost a fifth of the client's CPU per request (bench/write_makespan.py, 64 slots)
        body = {"model": self.endpoint.model, **request}
        body.update(body.pop("extra_body", None) or {})
        return body

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    def _redact(self, text: str) -> str:
        # error bodies are stored in failure tables; a server that echoes the key must not leak it there
        key = self.endpoint.api_key
        return text.replace(key, "***") if len(key) >= 8 else text

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, capped at backoff_max_s; a server's Retry-After (within the cap)
        is waited at least."""
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_base_s * 2 ** (state.attempt_number - 1))
        delay *= 0.5 + random.random() / 2  # jitter: clients that failed together do not retry together
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = error.retry_after if isinstance(error, _Retryable) else None
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_s))
        return delay


class _Retryable(Exception):
    """An attempt that failed in a way a later attempt may not: tenacity retries these."""

    def __init__(self, error: str, attempt: int, retry_after: float | None = None):
        super().__init__(error)
        self.error, self.attempt, self.retry_after = error, attempt, retry_after


class _EmptyResponse(Exception):
    pass


def _retry_after(e: openai.APIStatusError) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")
