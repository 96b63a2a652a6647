"""``provider: local`` on the CPU: a checkpoint directory converted to GGUF and served by llama.cpp's llama-server.

A tiny random Llama (2 layers, hidden 64) with the embedded SmolLM2 tokenizer stands in for a trained
checkpoint, so everything runs on the CPU in seconds and nothing is downloaded; the server is the real
``llama-server`` that ``make install`` builds (``longwriter.llm.llama_cpp_engine``). The last test converts the
real embedded GGUF (``base`` stage) and checks it against llama.cpp.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import shutil
import subprocess
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

from longwriter.errors import ConfigError, LongwriterError  # noqa: E402
from longwriter.generation import EvalModel, generate_answers  # noqa: E402
from longwriter.llm import (  # noqa: E402
    ClientSettings,
    LLMClient,
    ModelSpec,
    Sampling,
    open_endpoint,
    run_with_llm,
)
from longwriter.llm import (  # noqa: E402
    local as local_mod,
)
from longwriter.llm.llama_cpp_engine import engine_home, engine_version  # noqa: E402
from longwriter.llm.local import (  # noqa: E402
    checkpoint_identity,
    converted_gguf,
    llama_cpp_server,
    llama_server_command,
    local_model_path,
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


def _local_spec(path: Path, max_batch: int = 4, **kw: Any) -> ModelSpec:
    return ModelSpec(provider="local", path=str(path), max_batch=max_batch, n_ctx=1024, **kw)


@pytest.fixture(scope="module")
def server_url(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server on the tiny checkpoint in full precision (so that it is the checkpoint's own model)."""
    cache = tmp_path_factory.mktemp("cache")
    with llama_cpp_server(ckpt, "local", _local_spec(ckpt, gguf_outtype="f32"), cache, 120) as url:
        yield url


def _body(content: str, seed: int = 0, temperature: float = 0.0, max_tokens: int = 24, **kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "temperature": temperature, "top_p": 1.0,
            "max_tokens": max_tokens, "seed": seed, **kw}


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _text(result: dict[str, Any]) -> str:
    return result["choices"][0]["message"]["content"]


PROMPT = "Tell me a story about a cat."


# ------------------------------------------------------------------------------ 1. the server and its settings


def test_server_answers_the_openai_api(server_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server_url, api_key="x", max_retries=0, timeout=60)
    try:
        resp = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Write a long essay about rivers."}],
            max_tokens=8, temperature=0.8, top_p=0.95, seed=3)
        choice = resp.choices[0]
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason == "length"  # a random model does not stop within 8 tokens
        assert resp.usage is not None and resp.usage.completion_tokens == 8
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
        assert "local" in [m.id for m in client.models.list().data]
    finally:
        client.close()


def test_the_prompt_is_the_checkpoints_chat_template_and_greedy_is_its_model(server_url: str, ckpt: Path) -> None:
    """The GGUF carries the checkpoint's chat template (the same prompt tokens as transformers'), and greedy
    decoding of the F32 conversion is transformers' greedy decoding of the checkpoint."""
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    for prompt in (PROMPT, "写一篇关于春天的短文。"):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        served = _post(server_url, _body(prompt))
        assert served["usage"]["prompt_tokens"] == ids["input_ids"].shape[1]
        assert _text(served) == tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_the_server_runs_max_batch_slots_with_openais_defaults(server_url: str) -> None:
    """What a request leaves out means what it means on OpenAI's API: no top-k, no min-p, no repeat penalty,
    temperature and top_p 1 (llama.cpp's own defaults are top-k 40 and min-p 0.05)."""
    with urllib.request.urlopen(server_url.rsplit("/v1", 1)[0] + "/props", timeout=10) as resp:
        props = json.loads(resp.read())
    assert props["total_slots"] == 4
    defaults = props["default_generation_settings"]["params"]
    assert (defaults["top_k"], defaults["min_p"], defaults["top_p"], defaults["temperature"],
            defaults["repeat_penalty"], defaults["repeat_last_n"]) == (0, 0.0, 1.0, 1.0, 1.0, 64)


def test_the_command_line_follows_the_spec(ckpt: Path) -> None:
    spec = _local_spec(ckpt, max_batch=16, penalty_last_n=256, n_threads=3)
    cmd = llama_server_command(Path("/bin/llama-server"), Path("m.gguf"), "sft", 8080, spec)
    flag = {name: cmd[cmd.index(name) + 1] for name in ("-np", "-c", "-t", "-tb", "--repeat-last-n", "-a")}
    assert flag == {"-np": "16", "-c": str(16 * 1024), "-t": "3", "-tb": "3", "--repeat-last-n": "256", "-a": "sft"}
    assert "--no-cache-prompt" in cmd


# ---------------------------------------------------------- 2. every sampling option the client sends, honoured


def test_greedy_is_deterministic_ignores_the_seed_and_its_batch(server_url: str) -> None:
    alone = _text(_post(server_url, _body(PROMPT, seed=7)))
    assert _text(_post(server_url, _body(PROMPT, seed=8))) == alone
    others = [_body("word " * (5 * i + 1) + f"question {i}", seed=i) for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: _post(server_url, b), [_body(PROMPT, seed=7), *others]))
    assert _text(results[0]) == alone


def test_the_seed_decides_a_sampled_reply(server_url: str) -> None:
    one = _text(_post(server_url, _body(PROMPT, seed=1, temperature=1.0)))
    assert _text(_post(server_url, _body(PROMPT, seed=1, temperature=1.0))) == one
    assert _text(_post(server_url, _body(PROMPT, seed=2, temperature=1.0))) != one


def test_max_tokens_is_honoured(server_url: str) -> None:
    for n in (1, 5, 17):
        result = _post(server_url, _body(PROMPT, max_tokens=n, temperature=1.0))
        assert result["usage"]["completion_tokens"] == n and result["choices"][0]["finish_reason"] == "length"


def test_top_k_and_top_p_are_honoured(server_url: str) -> None:
    """top_k 1, or a top_p that keeps one token, at a high temperature is greedy decoding; without them the
    same request is not."""
    greedy = _text(_post(server_url, _body(PROMPT)))
    hot = {"temperature": 5.0, "seed": 3}
    assert _text(_post(server_url, {**_body(PROMPT, **hot), "top_k": 1})) == greedy
    assert _text(_post(server_url, {**_body(PROMPT, **hot), "top_p": 1e-6})) == greedy
    assert _text(_post(server_url, _body(PROMPT, **hot))) != greedy


@pytest.mark.parametrize(("frequency", "presence"), [(2.0, 0.0), (0.0, 2.0)], ids=["frequency", "presence"])
def test_penalties_are_honoured(server_url: str, frequency: float, presence: float) -> None:
    """The random model's greedy reply is one token repeated; a penalty on repeats breaks it."""
    greedy = _text(_post(server_url, _body(PROMPT)))
    assert len(set(greedy)) == 1
    penalised = _text(_post(server_url, _body(PROMPT, frequency_penalty=frequency, presence_penalty=presence)))
    assert penalised != greedy and len(set(penalised)) > 1


def test_a_json_schema_is_decoded_under_its_grammar(ckpt: Path, tmp_path: Path) -> None:
    """The client sends a local spec's schema as response_format json_schema; even a random model's reply then
    parses and follows it."""
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]},
                                               "score": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["verdict", "score"], "additionalProperties": False}
    spec = _local_spec(ckpt)
    assert spec.resolved_structured_output() == "json_schema"

    async def ask(llm: LLMClient) -> list[str]:
        return [(await llm.complete([{"role": "user", "content": "Rate it."}],
                                    Sampling(temperature=1.0, max_tokens=200, seed=s), schema=schema)).text
                for s in range(3)]

    texts, _ = run_with_llm(spec, ClientSettings(cache_dir=str(tmp_path / "cache")), ask)
    for text in texts:
        reply = json.loads(text)
        assert reply["verdict"] in ("yes", "no") and 1 <= reply["score"] <= 9 and set(reply) == {"verdict", "score"}


# ------------------------------------------------------------------ 3. conversion, identity, the engine missing


def test_the_conversion_is_cached_by_the_weights(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = converted_gguf(ckpt, "f16", tmp_path)
    assert first.read_bytes()[:4] == b"GGUF"
    assert checkpoint_identity(str(ckpt)) in first.name and "f16" in first.name
    assert not list(tmp_path.glob("gguf/*.partial"))

    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(subprocess, "run", no_conversion)
    assert converted_gguf(ckpt, "f16", tmp_path) == first


def test_a_checkpoint_llama_cpp_cannot_convert_is_reported_with_its_log(ckpt: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(ckpt, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(LongwriterError, match="could not convert.*convert.log"):
        converted_gguf(odd, "f16", tmp_path)
    assert not list(tmp_path.glob("gguf/*.gguf")) and not list(tmp_path.glob("gguf/*.partial"))


def test_a_missing_engine_says_how_to_build_it(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(local_mod, "use_vllm", lambda: False)
    assert engine_home() == tmp_path / "empty" / "longwriter" / f"llama-server-{engine_version()}"
    with open_endpoint(_local_spec(ckpt), ClientSettings(cache_dir=str(tmp_path / "cache"))) as endpoint:
        assert endpoint.start is not None
        with pytest.raises(ConfigError, match="make install"):
            endpoint.start()


def test_endpoint_identity_follows_the_weights_the_precision_and_the_engine(
        ckpt: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "use_vllm", lambda: False)
    same = tmp_path / "same"
    shutil.copytree(ckpt, same)
    assert checkpoint_identity(str(same)) == checkpoint_identity(str(ckpt))  # content, not path

    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.5
    changed = tmp_path / "changed"
    save_checkpoint(model, tokenizer, changed)
    assert checkpoint_identity(str(changed)) != checkpoint_identity(str(ckpt))

    settings = ClientSettings(cache_dir=str(tmp_path / "cache"))

    def identity(spec: ModelSpec) -> str:
        with open_endpoint(spec, settings) as endpoint:
            assert endpoint.base_url is None  # nothing started yet: servers start lazily
            assert endpoint.structured_output == "json_schema"
            return endpoint.identity

    base = identity(_local_spec(ckpt))
    assert base == f"local:{checkpoint_identity(str(ckpt))}:llama.cpp-{engine_version()}-f16"
    assert identity(_local_spec(changed)) != base
    assert identity(_local_spec(ckpt, gguf_outtype="q8_0")) != base
    assert identity(_local_spec(ckpt, penalty_last_n=256)) != base
    assert identity(_local_spec(ckpt, max_batch=16)) == base  # slots change speed, not the request
    with pytest.raises(ValueError, match="gguf_outtype"):
        _local_spec(ckpt, gguf_outtype="q4_k")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ 4. run_with_llm and the cache


async def _four_prompts(llm: LLMClient) -> list[tuple[str, str, int]]:
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=12, seed=5)
    completions = await asyncio.gather(*(
        llm.complete([{"role": "user", "content": f"Prompt {i}: describe a {w}."}], sampling)
        for i, w in enumerate(["tree", "house", "boat", "cloud"])))
    return [(c.text, c.finish_reason, c.completion_tokens) for c in completions]


def test_run_with_llm_keeps_a_batch_in_flight_caches_and_skips_the_server(
        ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "use_vllm", lambda: False)
    started: list[ModelSpec] = []
    real = local_mod.llama_cpp_server

    def recording(checkpoint: Path, alias: str, spec: ModelSpec, *args: Any) -> Any:
        started.append(spec)
        return real(checkpoint, alias, spec, *args)

    monkeypatch.setattr(local_mod, "llama_cpp_server", recording)
    spec = _local_spec(ckpt, max_batch=4)
    settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_concurrency=1)
    first, stats = run_with_llm(spec, settings, _four_prompts)
    assert len(first) == 4 and all(n == 12 for _, _, n in first)
    assert stats.sent_calls == 4 and stats.cache_hits == 0 and stats.failed_calls == 0
    assert len(started) == 1
    log = (tmp_path / "cache" / "llama-server.log").read_text(errors="replace")
    assert "n_slots = 4" in log or "n_slots=4" in log.replace(" ", "")

    def no_server(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fully cached run must not start the server")

    monkeypatch.setattr(local_mod, "llama_cpp_server", no_server)
    second, stats2 = run_with_llm(spec, settings, _four_prompts)
    assert second == first
    assert stats2.sent_calls == 0 and stats2.cache_hits == 4


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
