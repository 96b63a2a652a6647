"""``provider: local``: a transformers checkpoint served in-process behind an OpenAI-compatible endpoint.

A tiny random Llama (2 layers, hidden 64) with the embedded SmolLM2 tokenizer stands in for a trained
checkpoint, so everything runs on the CPU in seconds and nothing is downloaded. The last test converts the
real embedded GGUF (``base`` stage) and checks it against llama.cpp.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longwriter.errors import ConfigError  # noqa: E402
from longwriter.generation import EvalModel, generate_answers  # noqa: E402
from longwriter.llm import (  # noqa: E402
    ClientSettings,
    LLMClient,
    ModelSpec,
    Sampling,
    run_with_llm,
)
from longwriter.llm import (  # noqa: E402
    local as local_mod,
)
from longwriter.llm.local import (  # noqa: E402
    TransformersChat,
    checkpoint_identity,
    local_model_path,
    transformers_server,
    use_vllm,
)
from longwriter.llm.server import default_gguf  # noqa: E402
from longwriter.schemas import Answers  # noqa: E402
from longwriter.train.base_model import BaseModelConfig, run_base  # noqa: E402
from longwriter.train.checkpoint import save_checkpoint  # noqa: E402

# ---------------------------------------------------------------------------------------------- fixtures




@pytest.fixture(scope="module")
def ckpt(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint directory, as ``sft`` would write one."""
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    save_checkpoint(tiny_llama(tokenizer), tokenizer, out)
    return out


@pytest.fixture(scope="module")
def server_url(ckpt: Path) -> Iterator[str]:
    with transformers_server(ckpt) as url:
        yield url


@pytest.fixture(scope="module")
def chat(ckpt: Path) -> Iterator[TransformersChat]:
    """A batcher used directly, with a generous gather window so concurrent threads land in one batch;
    ``chat.batch_sizes`` records the rows of every ``_generate`` call."""
    c = TransformersChat(ckpt, max_batch=16, gather_s=0.4)
    c.batch_sizes = []  # type: ignore[attr-defined]
    generate = c._generate

    def recording(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        c.batch_sizes.append(len(bodies))  # type: ignore[attr-defined]
        return generate(bodies)

    c._generate = recording  # type: ignore[method-assign]
    yield c
    c.close()


def _body(content: str, seed: int = 0, temperature: float = 0.8, top_p: float = 0.95,
          max_tokens: int = 24) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "temperature": temperature, "top_p": top_p,
            "max_tokens": max_tokens, "seed": seed}


def _text(result: dict[str, Any]) -> str:
    return result["choices"][0]["message"]["content"]


def _concurrently(chat: TransformersChat, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
    """``chat.complete`` for every body from its own thread, all released at once."""
    results: list[dict[str, Any] | BaseException | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = chat.complete(bodies[i])
        except BaseException as e:  # reported to the test, not lost in the thread
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a request never finished"
    return results  # type: ignore[return-value]


def _post(url: str, data: bytes, timeout: float = 10.0) -> tuple[int | str, dict[str, Any] | None]:
    """POST raw bytes; (status, JSON body), or ("timeout", None) when the server never answers."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except TimeoutError:
        return "timeout", None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            return "timeout", None
        raise


def _local_spec(path: Path, max_batch: int = 4) -> ModelSpec:
    return ModelSpec(provider="local", path=str(path), max_batch=max_batch)


# ------------------------------------------------------------------------------ 1. the OpenAI-compatible API


def test_server_answers_the_openai_api(server_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server_url, api_key="x", max_retries=0, timeout=60)
    try:
        resp = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Write a long essay about rivers."}],
            max_tokens=8, temperature=0.8, top_p=0.95, seed=3)
        assert resp.object == "chat.completion"
        choice = resp.choices[0]
        assert choice.message.role == "assistant"
        assert isinstance(choice.message.content, str) and choice.message.content
        assert choice.finish_reason == "length"  # a random model does not stop within 8 tokens
        assert resp.usage is not None
        assert resp.usage.prompt_tokens > 0
        assert 0 < resp.usage.completion_tokens <= 8
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

        models = client.models.list()
        assert [m.id for m in models.data] == ["local"]
    finally:
        client.close()


def test_server_unknown_path_is_404_and_malformed_body_is_400(server_url: str) -> None:
    root = server_url.rsplit("/v1", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as get404:
        urllib.request.urlopen(f"{root}/v1/nothing-here", timeout=10)
    assert get404.value.code == 404

    status, payload = _post(f"{server_url}/completions", json.dumps({"prompt": "hi"}).encode())
    assert status == 404 and payload is not None and "error" in payload

    status, payload = _post(f"{server_url}/chat/completions", b"{this is not json")
    assert status == 400
    assert payload is not None and payload["error"]["type"] == "invalid_request_error"

    # the server still serves after a bad request
    status, payload = _post(f"{server_url}/chat/completions", json.dumps(_body("hello", max_tokens=2)).encode())
    assert status == 200 and payload is not None and payload["usage"]["completion_tokens"] <= 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the dying batcher
@pytest.mark.parametrize("data", [b"[1, 2]", json.dumps(_body("hi", temperature="hot")).encode()],  # type: ignore[arg-type]
                         ids=["not-an-object", "bad-temperature"])
def test_server_survives_bad_sampling_fields(ckpt: Path, data: bytes) -> None:
    with transformers_server(ckpt) as url:  # its own server: the bug kills the batcher
        status, _ = _post(f"{url}/chat/completions", data, timeout=3)
        assert status == 400
        status, _ = _post(f"{url}/chat/completions", json.dumps(_body("hello", max_tokens=2)).encode(), timeout=10)
        assert status == 200


# -------------------------------------------------------------------------------------------- 2. batching


def test_concurrent_requests_are_batched(chat: TransformersChat) -> None:
    chat.batch_sizes.clear()  # type: ignore[attr-defined]
    bodies = [_body(f"Question number {i}: " + "why " * i, seed=i) for i in range(6)]
    results = _concurrently(chat, bodies)
    for r in results:
        assert isinstance(r, dict), r
        assert r["choices"][0]["finish_reason"] in ("length", "stop")
        assert r["usage"]["prompt_tokens"] > 0 and 0 < r["usage"]["completion_tokens"] <= 24
    sizes = chat.batch_sizes  # type: ignore[attr-defined]
    assert sum(sizes) == 6
    assert max(sizes) > 1, f"no batching: batch sizes {sizes}"


def test_requests_with_different_sampling_are_not_mixed(chat: TransformersChat) -> None:
    chat.batch_sizes.clear()  # type: ignore[attr-defined]
    bodies = [_body("a", seed=1, temperature=0.8), _body("b", seed=2, temperature=0.8),
              _body("c", seed=3, temperature=0.0), _body("d", seed=4, temperature=0.0)]
    results = _concurrently(chat, bodies)
    assert all(isinstance(r, dict) for r in results), results
    assert sorted(chat.batch_sizes) == [2, 2]  # type: ignore[attr-defined]


def test_one_bad_request_does_not_fail_its_batch(chat: TransformersChat) -> None:
    bad = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 4, "seed": 0}  # no messages: refused at intake
    good = _body("hello", seed=1, max_tokens=4)
    results = _concurrently(chat, [bad, good])
    assert isinstance(results[0], ValueError)
    assert isinstance(results[1], dict), f"the valid request failed with {results[1]!r}"


def test_a_generation_error_fails_only_its_own_request(chat: TransformersChat, monkeypatch) -> None:
    real = chat._generate

    def fragile(bodies):
        if any(b["messages"][0]["content"] == "poison" for b in bodies):
            raise RuntimeError("cannot generate this one")
        return real(bodies)

    monkeypatch.setattr(chat, "_generate", fragile)
    results = _concurrently(chat, [_body("poison", seed=1, max_tokens=4), _body("fine", seed=2, max_tokens=4)])
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], dict), f"the valid request failed with {results[1]!r}"


# ------------------------------------------------------------------------------ 3. per-row determinism


def test_rows_are_deterministic_whatever_shares_their_batch(chat: TransformersChat) -> None:
    target = _body("Tell me a story about a cat.", seed=7, temperature=0.8)
    others = [_body("word " * (7 * i + 1) + f"question {i}", seed=100 + i, temperature=0.8) for i in range(5)]

    alone = _text(chat.complete(target))
    chat.batch_sizes.clear()  # type: ignore[attr-defined]
    results = _concurrently(chat, [target, *others])
    assert all(isinstance(r, dict) for r in results), results
    assert max(chat.batch_sizes) == 6, chat.batch_sizes  # type: ignore[attr-defined]
    assert _text(results[0]) == alone  # type: ignore[arg-type]
    assert _text(chat.complete(target)) == alone  # and again alone

    other_seed = _text(chat.complete({**target, "seed": 8}))
    assert other_seed != alone
    # the other rows of the batch drew their own tokens
    assert len({_text(r) for r in results}) == 6  # type: ignore[arg-type]



@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(chat: TransformersChat,
                                                                            temperature: float) -> None:
    """Rows with smaller limits stop first and are dropped from the batch (and its KV cache) mid-way: the rows
    still running must come out as they do alone, and each short row exactly at its own limit."""
    target = _body("Tell me a story about a cat.", seed=7, temperature=temperature, max_tokens=24)
    short = [_body(f"question {i}: " + "word " * (3 * i + 1), seed=50 + i, temperature=temperature,
                   max_tokens=limit) for i, limit in enumerate([2, 5, 11])]
    alone = [_text(chat.complete(b)) for b in [target, *short]]
    chat.batch_sizes.clear()  # type: ignore[attr-defined]
    results = _concurrently(chat, [target, *short])
    assert chat.batch_sizes == [4], chat.batch_sizes  # type: ignore[attr-defined]
    assert [_text(r) for r in results] == alone  # type: ignore[arg-type]
    for body, result in zip([target, *short], results, strict=True):
        usage, choice = result["usage"], result["choices"][0]  # type: ignore[index]
        assert choice["finish_reason"] == "length" or usage["completion_tokens"] < body["max_tokens"]
        assert usage["completion_tokens"] <= body["max_tokens"]

def test_greedy_is_deterministic_and_ignores_the_seed(chat: TransformersChat) -> None:
    target = _body("Tell me a story about a cat.", seed=7, temperature=0.0)
    others = [_body("word " * (5 * i + 1) + f"question {i}", seed=100 + i, temperature=0.0) for i in range(5)]
    alone = _text(chat.complete(target))
    assert alone
    assert _text(chat.complete({**target, "seed": 8})) == alone
    results = _concurrently(chat, [target, *others])
    assert all(isinstance(r, dict) for r in results), results
    assert _text(results[0]) == alone  # type: ignore[arg-type]

    # the same as transformers' own greedy decoding of the unpadded prompt
    tok = chat.tokenizer
    ids = tok.apply_chat_template(target["messages"], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = chat.model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
    assert tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True) == alone


# ---------------------------------------------------------- 3b. every sampling option honoured or refused


def test_stop_strings_cut_the_text_and_finish_with_stop(chat: TransformersChat) -> None:
    """``stop``: generation ends once the text holds a stop string, and the text ends before it (OpenAI's rule),
    finish_reason "stop"; a row with stop strings leaves the other rows of its batch as they are alone."""
    target = _body("Tell me a story about a cat.", seed=7, temperature=0.0, max_tokens=24)
    free = chat.complete(target)
    text = _text(free)
    assert free["choices"][0]["finish_reason"] == "length" and len(text) > 20
    stop = text[len(text) // 4:len(text) // 4 + 3]
    expected = text[:text.find(stop)]

    other = _body("word word question", seed=3, temperature=0.0, max_tokens=24)
    results = _concurrently(chat, [{**target, "stop": stop}, {**target, "stop": ["never in the text", stop]}, other])
    for result in results[:2]:
        assert _text(result) == expected  # type: ignore[arg-type]
        assert result["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
        assert result["usage"]["completion_tokens"] < 24  # type: ignore[index]  # it stopped generating, too
    assert _text(results[2]) == _text(chat.complete(other))  # type: ignore[arg-type]
    # a stop string that never occurs changes nothing
    assert chat.complete({**target, "stop": ["never in the text"]}) | {"id": "", "created": 0} \
        == free | {"id": "", "created": 0}


def test_row_sampler_applies_openai_penalties() -> None:
    """The arithmetic, on fixed logits: logit - frequency x count - presence x (count > 0), per row."""
    from longwriter.llm.local import _RowSampler

    scores = torch.tensor([[3.0, 2.5, 0.0, -9.0]] * 3)
    sampler = _RowSampler(torch, [0, 0, 0], temperature=0.0, top_p=1.0,
                          penalties=[(0.0, 0.0), (0.4, 0.0), (0.0, 0.6)])
    picks = [sampler([0, 1, 2], scores) for _ in range(4)]
    assert [p[0] for p in picks] == [0, 0, 0, 0]  # no penalty: greedy
    assert [p[1] for p in picks] == [0, 0, 1, 0]  # 3.0, 2.6, 2.2 < 2.5, then 2.1 < 2.2
    assert [p[2] for p in picks] == [0, 1, 0, 0]  # 3.0, 2.4 < 2.5, then both present: 2.4 > 1.9
    assert sampler([1], scores[:1]) == [1]  # a row alone keeps its own counts: 3.0 - 3 x 0.4 < 2.5 - 0.4


@pytest.mark.parametrize(("frequency", "presence"), [(2.0, 0.0), (0.0, 2.0), (-0.5, 1.0)],
                         ids=["frequency", "presence", "both"])
def test_penalties_are_honoured_as_openai_defines_them(chat: TransformersChat, frequency: float,
                                                       presence: float) -> None:
    """``frequency_penalty`` / ``presence_penalty``: greedy output under a penalty differs from none, and equals
    transformers' greedy decoding with OpenAI's penalty over the completion's tokens as a logits processor."""
    target = _body("Tell me a story about a cat.", seed=7, temperature=0.0, max_tokens=24)
    penalised = {**target, "frequency_penalty": frequency, "presence_penalty": presence}
    text = _text(chat.complete(penalised))
    if frequency >= 0:  # a positive penalty breaks the random model's loops
        assert text != _text(chat.complete(target))

    tok = chat.tokenizer
    ids = tok.apply_chat_template(target["messages"], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    width = ids["input_ids"].shape[1]

    class OpenAIPenalties(transformers.LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, input_ids[:, width:], torch.ones_like(input_ids[:, width:], dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0)

    with torch.inference_mode():
        out = chat.model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id,
                                  logits_processor=transformers.LogitsProcessorList([OpenAIPenalties()]))
    assert tok.decode(out[0][width:], skip_special_tokens=True) == text
    # in a batch with unpenalised rows, the row is what it is alone
    results = _concurrently(chat, [penalised, _body("word question", seed=1, temperature=0.0)])
    assert _text(results[0]) == text  # type: ignore[arg-type]


def test_max_completion_tokens_is_max_tokens(server_url: str) -> None:
    url = f"{server_url}/chat/completions"
    body = _body("hello", temperature=0.0)
    del body["max_tokens"]
    status, new = _post(url, json.dumps({**body, "max_completion_tokens": 3}).encode(), timeout=30)
    _, old = _post(url, json.dumps({**body, "max_tokens": 3}).encode(), timeout=30)
    assert status == 200 and new is not None and old is not None
    assert _text(new) == _text(old) and new["usage"]["completion_tokens"] == 3
    status, payload = _post(url, json.dumps({**body, "max_tokens": 3, "max_completion_tokens": 4}).encode())
    assert status == 400 and payload is not None and "max_completion_tokens" in payload["error"]["message"]


@pytest.mark.parametrize(("field", "value"), [
    ("logit_bias", {"42": 5}), ("n", 2), ("stream", True), ("logprobs", True), ("top_logprobs", 3),
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("repetition_penalty", 1.1), ("min_p", 0.1),
    ("frequency_penalty", 2.5), ("presence_penalty", "high"), ("stop", ""), ("stop", 5), ("stop", ["a", None]),
])
def test_options_it_cannot_honour_are_refused_naming_them(server_url: str, field: str, value: Any) -> None:
    """Anything but the options it honours (or their no-op values) is an HTTP 400 naming the option: never
    ignored. The server keeps serving."""
    status, payload = _post(f"{server_url}/chat/completions",
                            json.dumps({**_body("hello", max_tokens=2), field: value}).encode())
    assert status == 400, payload
    assert payload is not None and payload["error"]["type"] == "invalid_request_error"
    assert field in payload["error"]["message"]


def test_no_op_values_of_unsupported_options_are_accepted(server_url: str) -> None:
    body = {**_body("hello", max_tokens=2, temperature=0.0), "n": 1, "stream": False, "logprobs": False,
            "stop": None, "response_format": {"type": "text"}, "logit_bias": None}
    status, payload = _post(f"{server_url}/chat/completions", json.dumps(body).encode(), timeout=30)
    assert status == 200, payload


@pytest.mark.parametrize("mode", ["json_schema", "json_object"])
def test_response_format_is_refused_through_the_client(server_url: str, tmp_path: Path, mode: str) -> None:
    """The transformers server has no constrained decoding: a schema sent as response_format is refused at once
    (400, not retried), and the client's error names the option and the provider. A local spec's default
    (``structured_output: auto`` without vLLM) sends no response_format, so the same call then succeeds."""
    from longwriter.llm import Endpoint, LLMCallError, ResponseCache

    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    sampling = Sampling(temperature=0.0, max_tokens=4)

    async def ask(structured_output: str) -> Any:
        endpoint = Endpoint(server_url, "local", "local:test", structured_output)
        with ResponseCache(tmp_path / f"{structured_output}.sqlite") as cache:
            async with LLMClient(endpoint, cache, ClientSettings(cache_dir=str(tmp_path), max_retries=3)) as llm:
                try:
                    return await llm.complete([{"role": "user", "content": "Rate it."}], sampling, schema=schema)
                finally:
                    assert llm.stats.retries == 0

    with pytest.raises(LLMCallError) as refused:
        asyncio.run(ask(mode))
    message = str(refused.value)
    assert "HTTP 400" in message and "response_format" in message and "provider local" in message
    assert refused.value.attempts == 1

    default = ModelSpec(provider="local", path="models/sft").resolved_structured_output(vllm=False)
    assert default == "none"
    assert asyncio.run(ask(default)).text is not None


# ------------------------------------------------------------------------------ 4. run_with_llm and the cache


async def _four_prompts(llm: LLMClient) -> list[tuple[str, str, int]]:
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=12, seed=5)
    completions = await asyncio.gather(*(
        llm.complete([{"role": "user", "content": f"Prompt {i}: describe a {w}."}], sampling)
        for i, w in enumerate(["tree", "house", "boat", "cloud"])))
    return [(c.text, c.finish_reason, c.completion_tokens) for c in completions]


def test_run_with_llm_batches_caches_and_skips_the_model(
        ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "use_vllm", lambda: False)
    init = TransformersChat.__init__
    created: list[TransformersChat] = []
    sizes: list[int] = []
    generate = TransformersChat._generate

    def wide_init(self: TransformersChat, path: Any, n_threads: int | None = None, max_batch: int = 16,
                  gather_s: float = 0.05, **kwargs: Any) -> None:
        init(self, path, n_threads, max_batch, gather_s=0.5, **kwargs)  # a wide window: the test is about concurrency
        created.append(self)

    def recording(self: TransformersChat, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sizes.append(len(bodies))
        return generate(self, bodies)

    monkeypatch.setattr(TransformersChat, "__init__", wide_init)
    monkeypatch.setattr(TransformersChat, "_generate", recording)

    spec = _local_spec(ckpt, max_batch=4)
    settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_concurrency=1)
    first, stats = run_with_llm(spec, settings, _four_prompts)
    assert len(first) == 4 and all(text for text, _, _ in first)
    assert stats.sent_calls == 4 and stats.cache_hits == 0 and stats.failed_calls == 0
    assert len(created) == 1 and created[0].max_batch == 4
    assert sum(sizes) == 4 and max(sizes) > 1, f"max_concurrency was not raised to max_batch: batches {sizes}"

    def no_model(self: TransformersChat, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fully cached run must not load the model")

    monkeypatch.setattr(TransformersChat, "__init__", no_model)
    second, stats2 = run_with_llm(spec, settings, _four_prompts)
    assert second == first
    assert stats2.sent_calls == 0 and stats2.cache_hits == 4


def test_endpoint_identity_follows_the_weights(ckpt: Path, tokenizer: Any, tmp_path: Path) -> None:
    same = tmp_path / "same"
    shutil.copytree(ckpt, same)
    assert checkpoint_identity(str(same)) == checkpoint_identity(str(ckpt))  # content, not path

    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.5
    changed = tmp_path / "changed"
    save_checkpoint(model, tokenizer, changed)
    assert checkpoint_identity(str(changed)) != checkpoint_identity(str(ckpt))

    from longwriter.llm import open_endpoint

    settings = ClientSettings(cache_dir=str(tmp_path / "cache"))
    with open_endpoint(_local_spec(ckpt), settings) as a, open_endpoint(_local_spec(changed), settings) as b:
        assert a.base_url is None and b.base_url is None  # nothing started yet: servers start lazily
        assert a.identity == f"local:{checkpoint_identity(str(ckpt))}"
        assert a.identity != b.identity
        assert a.structured_output == "none"


# ----------------------------------------------------------------------------------- 5. generate_answers


def test_generate_answers_with_a_local_model(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "use_vllm", lambda: False)
    bench = pl.DataFrame({
        "index": [0, 1], "prompt": ["Write a 500-word story about a lighthouse.", "写一篇关于春天的短文。"],
        "type": ["fiction", None], "required": [500, 300], "lang": ["en", "zh"], "bucket": ["[0, 500)", "[0, 500)"],
    }, schema={"index": pl.Int64, "prompt": pl.Utf8, "type": pl.Utf8, "required": pl.Int64, "lang": pl.Utf8,
               "bucket": pl.Utf8})
    models = (EvalModel("tiny-local", _local_spec(ckpt, max_batch=4)),)
    sampling = Sampling(temperature=0.5, top_p=1.0, max_tokens=16)
    answers, failures, stats = generate_answers(bench, models, sampling, ClientSettings(cache_dir=str(tmp_path)),
                                                "test", samples=2)
    assert failures == []
    assert answers.height == 4
    Answers.validate(answers)
    assert answers.select("index", "sample").rows() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (answers["model"] == "tiny-local").all()
    assert (answers["max_tokens"] == 16).all()
    assert (answers["completion_tokens"] <= 16).all()
    assert stats["tiny-local"].sent_calls == 4
    for index in (0, 1):  # each sample has its own seed
        texts = answers.filter(pl.col("index") == index)["text"].to_list()
        assert texts[0] != texts[1]


# ------------------------------------------------------------------------------------------ 6. config errors


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path"):
        ModelSpec(provider="local")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="config.json"):
        local_model_path(ModelSpec(provider="local", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="config.json"):
        local_model_path(ModelSpec(provider="local", path=str(tmp_path / "missing")))


def test_config_error_surfaces_from_open_endpoint(tmp_path: Path) -> None:
    from longwriter.llm import open_endpoint

    with pytest.raises(ConfigError), open_endpoint(ModelSpec(provider="local", path=str(tmp_path)),
                                                   ClientSettings(cache_dir=str(tmp_path))):
        pass


def test_use_vllm_without_vllm() -> None:
    expected = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    assert use_vllm() is expected
    if importlib.util.find_spec("vllm") is None:
        assert use_vllm() is False


# ------------------------------------------------------------------------------- 7. the base conversion


def test_base_converts_the_embedded_gguf_like_llama_cpp(tmp_path: Path) -> None:
    """``base`` de-quantizes the embedded Q4_1 GGUF into a plain fp32 checkpoint.

    llama.cpp multiplies with quantized weights *and* 8-bit quantized activations, transformers with the
    de-quantized weights in fp32, so their logits differ by up to ~1.5 (on logits of ~25): the top-5 sets and
    order agree, but near-ties (e.g. "The" 25.33 vs "L" 25.24 for the France question) can swap the top-1.
    Hence llama.cpp's greedy token must be among transformers' top 3, not necessarily its top 1.
    """
    out, metrics = tmp_path / "base", tmp_path / "metrics" / "base.json"
    result = run_base(BaseModelConfig(), out, metrics)
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert result["parameters"] == 134515008
    assert json.loads(metrics.read_text())["parameters"] == 134515008
    assert result["source"] == f"gguf:{default_gguf().name}"

    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert model.num_parameters() == 134515008

    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(default_gguf()), n_ctx=512, verbose=False, logits_all=False)
    try:
        for question in ["What is the capital of France?", "Hello!"]:
            messages = [{"role": "user", "content": question}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            with torch.inference_mode():
                logits = model(**ids).logits[0, -1]
            top3 = [tok.decode([i]).strip() for i in logits.topk(3).indices.tolist()]

            resp = llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0)
            assert resp["usage"]["prompt_tokens"] == ids["input_ids"].shape[1]  # the same chat-templated prompt
            first = resp["choices"][0]["message"]["content"].strip()
            assert first in top3, f"{question!r}: llama.cpp says {first!r}, transformers' top 3 are {top3}"
    finally:
        llm.close()
