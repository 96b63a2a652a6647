"""The OpenAI Batch API behind ``LLMClient.complete``, for a model spec with ``batch: true``.

A stage does not change: it makes its calls concurrently as always. Calls the cache cannot answer queue up
here, and once no new call has joined for ``batch_gather_s`` the queue goes out as one batch: a *round*.
Rounds fall out of how each stage awaits: plan, the selector, the judge, general answers and DPO scoring make
all their calls at once (one round); sequential write makes paragraph k of every instruction once paragraph
k-1 came back (round k), parallel write every paragraph at once, and a continuation or rewrite joins the
round after its paragraph's. A line that fails or expires is answered with its error; the client then asks
again, so it joins the next round's batch, and after ``max_retries`` rounds it goes to the failures table.

Every answered line is stored in the response cache the moment its batch's output is read, awaited or not.
A batch is recorded in the cache's ``batches`` table when its input file is uploaded and again when it is
created, both before it is polled: a rerun after a crash or Ctrl-C polls that batch (finding it by its input
file when its creation was not confirmed) and never submits its calls again.

Hand-written rather than a library's: no maintained library submits, resumes and polls OpenAI batches behind
an awaitable per request; the API calls themselves are the openai client's, retried by tenacity.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from longwriter.llm.cache import ResponseCache
from longwriter.llm.runner import progress_bar
from longwriter.llm.spec import ClientSettings

if TYPE_CHECKING:
    import openai

T = TypeVar("T")

_ENDPOINT = "/v1/chat/completions"
_WINDOW = "24h"  # the only completion window the Batch API offers
_DONE = ("completed", "failed", "expired", "cancelled")
# how far back to look, in seconds, for a batch whose creation was not confirmed (clock skew between hosts)
_FIND_SLACK_S = 3600
_FATAL_STATUS = {400, 401, 403, 404, 422}


@dataclass(frozen=True)
class Answer:
    """One answered line of a batch (what the response cache stores)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached_tokens: int = 0  # of prompt_tokens, those the API reported as cached (billed at the cached price)


# a line's outcome: its Answer, or the error that a later round may not repeat
Outcome = Answer | str


class BatchRunner:
    """Rounds of one client's uncached calls, sent as batches of ``endpoint``'s model."""

    def __init__(self, connect: Callable[[], Awaitable[openai.AsyncOpenAI]], identity: str,
                 cache: ResponseCache, settings: ClientSettings, *, before_submit: Callable[[], None],
                 on_answer: Callable[[Answer], None], on_batch: Callable[[float], None],
                 redact: Callable[[str], str], wait: Callable[[RetryCallState], float]):
        self._connect, self.identity, self.cache, self.settings = connect, identity, cache, settings
        self._before_submit, self._on_answer, self._on_batch, self._redact, self._wait = (
            before_submit, on_answer, on_batch, redact, wait)
        self._queue: dict[str, tuple[dict[str, Any], list[asyncio.Future[Outcome]]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._rounds: set[asyncio.Task[None]] = set()
        # the batches this cache has open for this model: input file id -> (batch id or None, request keys)
        self._open = {fid: (bid, keys) for fid, bid, keys in cache.open_batches(identity)}
        self._key_file = {k: fid for fid, (_, keys) in self._open.items() for k in keys}
        self._polls: dict[str, asyncio.Task[dict[str, Outcome]]] = {}

    async def answer(self, key: str, body: dict[str, Any]) -> Outcome:
        """The outcome of request ``body`` (its cache key ``key``) in the batch that holds it or the next one."""
        import openai  # on first use: see LLMClient._connected
        fid = self._key_file.get(key)
        if fid is not None:  # submitted by an earlier run that stopped before its batch was read
            try:
                results = await self._poll_task(fid)
            except openai.OpenAIError as e:  # after its retries: this attempt failed with it
                return self._redact(f"batch not read: {type(e).__name__}: {e}")
            return results.get(key, "missing from the batch's output and error files")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.setdefault(key, (body, []))[1].append(future)
        if len(self._queue) >= self.settings.batch_max_requests:
            self._start_round()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_when_quiet())
        return await future

    async def _flush_when_quiet(self) -> None:
        while True:
            seen = len(self._queue)
            await asyncio.sleep(self.settings.batch_gather_s)
            if len(self._queue) == seen:
                break
        self._flusher = None
        if self._queue:
            self._start_round()

    def _start_round(self) -> None:
        queue, self._queue = self._queue, {}
        task = asyncio.create_task(self._round(queue))
        self._rounds.add(task)  # a reference, or the loop may collect the task mid-flight
        task.add_done_callback(self._rounds.discard)

    async def _round(self, queue: dict[str, tuple[dict[str, Any], list[asyncio.Future[Outcome]]]]) -> None:
        import openai  # on first use: see LLMClient._connected
        missing = "missing from the batch's output and error files"
        try:
            self._before_submit()  # the budget: a round past it is never sent, and the stage stops
        except Exception as e:
            for _, futures in queue.values():
                for f in futures:
                    f.set_exception(e)
            return
        try:
            fid = await self._submit({key: body for key, (body, _) in queue.items()})
            results = await self._poll_task(fid)
        except asyncio.CancelledError:
            for _, futures in queue.values():
                for f in futures:
                    f.cancel()
            raise
        except openai.OpenAIError as e:  # after its retries: each call's attempt failed with it
            results, missing = {}, self._redact(f"batch not submitted or not read: {type(e).__name__}: {e}")
        for key, (_, futures) in queue.items():
            for f in futures:
                if not f.done():
                    f.set_result(results.get(key, missing))

    async def _submit(self, bodies: dict[str, dict[str, Any]]) -> str:
        client = await self._connect()
        data = "".join(json.dumps({"custom_id": key, "method": "POST", "url": _ENDPOINT, "body": body},
                                  ensure_ascii=False) + "\n" for key, body in bodies.items())
        upload = await self._api(lambda: client.files.create(
            file=("longwriter-batch.jsonl", data.encode("utf-8")), purpose="batch"))
        keys = list(bodies)
        self.cache.batch_uploaded(upload.id, self.identity, keys)
        since = time.time() - _FIND_SLACK_S
        tries = 0

        async def create() -> Any:
            nonlocal tries
            tries += 1
            if tries > 1:  # the last try may have created the batch before its reply was lost
                found = await self._find(client, upload.id, since)
                if found is not None:
                    return found
            return await client.batches.create(input_file_id=upload.id, endpoint=_ENDPOINT,
                                               completion_window=_WINDOW, metadata={"longwriter": "1"})
        batch = await self._api(create)
        self.cache.batch_created(upload.id, batch.id)
        self._open[upload.id] = (batch.id, keys)
        self._key_file.update(dict.fromkeys(keys, upload.id))
        return upload.id

    def _poll_task(self, fid: str) -> asyncio.Task[dict[str, Outcome]]:
        task = self._polls.get(fid)
        # one poller per batch, shared by every call waiting on it; one that failed (the API unreachable past its
        # retries) is started again by the next attempt: the batch is still there, polled, never sent again
        if task is None or (task.done() and not task.cancelled() and task.exception() is not None):
            task = self._polls[fid] = asyncio.create_task(self._poll(fid))
        return task

    async def _poll(self, fid: str) -> dict[str, Outcome]:
        client = await self._connect()
        batch_id, keys = self._open[fid]
        if batch_id is None:  # a run stopped between creating the batch and recording it
            found = await self._find(client, fid, 0.0)
            if found is None:  # never created: nothing was submitted, the calls go into the next round
                self._close(fid, keys, forget=True)
                return {k: "its batch was never created (the run stopped first)" for k in keys}
            batch_id = found.id
            self.cache.batch_created(fid, batch_id)
        started = time.perf_counter()
        with progress_bar(len(keys), f"batch {batch_id}", "req") as bar:
            while True:
                batch = await self._api(lambda: client.batches.retrieve(batch_id))
                counts = batch.request_counts
                if counts is not None:
                    bar.total = counts.total or len(keys)
                    bar.n = counts.completed + counts.failed
                    bar.set_postfix_str(f"{batch.status}, {counts.failed} failed", refresh=True)
                if batch.status in _DONE:
                    break
                await asyncio.sleep(self.settings.batch_poll_s)
        waited = time.perf_counter() - started
        results: dict[str, Outcome] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._api(lambda f=file_id: client.files.content(f))
                for line in content.text.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        results[item["custom_id"]] = self._outcome(item, waited)
        why = f"batch {batch_id} {batch.status}"
        if batch.errors and batch.errors.data:
            why += ": " + "; ".join(f"{e.code}: {e.message}" for e in batch.errors.data)
        for key in keys:
            results.setdefault(key, self._redact(why))
        for key, outcome in results.items():
            if isinstance(outcome, Answer):
                self.cache.put(key, self.identity, asdict(outcome))
                self._on_answer(outcome)
        self._on_batch(waited)
        self._close(fid, keys)
        return results

    def _close(self, fid: str, keys: list[str], forget: bool = False) -> None:
        if forget:
            self.cache.batch_forget(fid)
        else:
            self.cache.batch_finished(fid)
        for key in keys:
            if self._key_file.get(key) == fid:
                del self._key_file[key]  # a failed line's next ask joins the next round

    def _outcome(self, item: dict[str, Any], waited: float) -> Outcome:
        if item.get("error"):
            e = item["error"]
            return self._redact(f"{e.get('code')}: {e.get('message')}")
        response = item.get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") != 200:
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            return self._redact(f"HTTP {response.get('status_code')}: {message or body}")
        choices = body.get("choices") or []
        text = ((choices[0].get("message") or {}).get("content")) if choices else None
        if text is None:
            return "response has no choices" if not choices else "response message has no content"
        usage = body.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        return Answer(text=text, finish_reason=choices[0].get("finish_reason") or "unknown",
                      prompt_tokens=prompt_tokens, completion_tokens=int(usage.get("completion_tokens") or 0),
                      latency_s=round(waited, 4), cached_tokens=cached_prompt_tokens(usage, prompt_tokens))

    async def _find(self, client: openai.AsyncOpenAI, fid: str, since: float) -> Any | None:
        """The batch created from input file ``fid``, if any (the list is newest first)."""
        async def scan() -> Any | None:
            async for batch in client.batches.list(limit=100):
                if batch.input_file_id == fid:
                    return batch
                if batch.created_at < since:
                    return None
            return None
        return await self._api(scan)

    async def _api(self, call: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(stop=stop_after_attempt(self.settings.max_retries + 1), reraise=True,
                                 wait=self._wait, retry=retry_if_exception(_transient))
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises")


def cached_prompt_tokens(usage: Any, prompt_tokens: int) -> int:
    """The prompt tokens a reply's usage (the SDK's object, or a Batch API line's JSON) reports as cached
    (``prompt_tokens_details.cached_tokens``: OpenAI, vLLM with its prefix cache), 0 when absent or null, never
    more than ``prompt_tokens``."""
    def field(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    cached = field(field(usage, "prompt_tokens_details"), "cached_tokens")
    if isinstance(cached, bool) or not isinstance(cached, int | float):
        return 0
    return max(0, min(int(cached), prompt_tokens))


def _transient(e: BaseException) -> bool:
    import openai  # on first use: see LLMClient._connected
    if isinstance(e, openai.APIStatusError):
        return e.status_code not in _FATAL_STATUS
    return isinstance(e, openai.APIConnectionError | openai.APITimeoutError | json.JSONDecodeError)
