"""The embedded llama.cpp server: found, started, answering through the client with a JSON schema, and
never left running (normal exit, error, SIGTERM, kill -9 of the stage)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longwriter.agentwrite.plan import PlanConfig, Repairs, UnusablePlan, parse_plan_json, plan_schema, repair
from longwriter.errors import LongwriterError
from longwriter.llm import ClientSettings, Endpoint, LLMClient, ModelSpec, ResponseCache, Sampling
from longwriter.llm.server import default_gguf, embedded_identity, embedded_server

ROOT = Path(__file__).parent.parent


def servers() -> set[int]:
    """The embedded servers this test process started: under pytest-xdist, another worker's stages run theirs
    meanwhile (every process a worker starts inherits its PYTEST_XDIST_WORKER)."""
    out = subprocess.run(["pgrep", "-f", "longwriter.llm.llama_server"], capture_output=True, text=True).stdout
    pids = {int(p) for p in out.split()}
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return pids
    mine = f"PYTEST_XDIST_WORKER={worker}".encode()
    found = set()
    for pid in pids:
        try:
            if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
        except OSError:  # gone since pgrep listed it
            pass
    return found


def test_default_model_is_the_packaged_gguf():
    path = default_gguf()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert embedded_identity(ModelSpec()).startswith("embedded:gguf-")


def test_plan_with_schema_from_real_model(embedded_url, tmp_path):
    cfg = PlanConfig(min_paragraphs=3, max_paragraphs=5, min_words=100, max_words=300)
    endpoint = Endpoint(embedded_url, "smollm2-135m-instruct", "embedded:test", "json_object")

    async def main():
        with ResponseCache(tmp_path / "c.sqlite") as cache:
            async with LLMClient(endpoint, cache, ClientSettings(cache_dir=str(tmp_path))) as llm:
                from longwriter.agentwrite.plan import plan_messages
                msgs = plan_messages("Write a 1000-word essay about lighthouses.", 1000, cfg, structured=True)
                return await llm.complete(msgs, Sampling(temperature=0.0, max_tokens=600), schema=plan_schema(3, 5))

    reply = asyncio.run(main())
    paragraphs = parse_plan_json(reply.text)  # the grammar makes it well-formed JSON with 3-5 items
    assert 3 <= len(paragraphs) <= 5
    try:
        plan = repair(paragraphs, 1000, cfg, Repairs())
    except UnusablePlan as e:
        # the tiny model often repeats main points; the stage then re-asks with the next sample index
        assert "distinct paragraphs" in str(e)
    else:
        assert sum(w for _, w in plan) == 1000 and all(100 <= w <= 300 for _, w in plan)


def test_a_new_revision_is_asked_again_and_an_old_one_is_a_cache_hit(embedded_url, tmp_path):
    """The README's GPU route serves each retrained checkpoint under the same name and URL: only ``revision``
    tells the cache that the weights behind the name changed."""
    from longwriter.llm import run_with_llm

    settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_retries=1)
    messages = [{"role": "user", "content": "Name a colour."}]

    def ask(revision: str | None) -> tuple[str, int]:
        spec = ModelSpec(provider="openai", base_url=embedded_url, model="served-model", revision=revision)

        async def work(llm: LLMClient) -> str:
            return (await llm.complete(messages, Sampling(temperature=0.0, max_tokens=8))).text
        text, stats = run_with_llm(spec, settings, work)
        return text, stats.as_metrics()["sent_calls"]

    first, paid = ask("ckpt-1")
    assert paid == 1
    assert ask("ckpt-2")[1] == 1  # retrained, served under the same name: asked again
    assert ask("ckpt-1") == (first, 0)  # the old revision's answer comes from the cache
    assert ask(None)[1] == 1  # no revision is a model of its own, never one of the revisions
    assert ModelSpec(provider="openai", base_url="http://h/v1", model="m", revision="r").cache_identity("x") == "x@r"
    assert ModelSpec().cache_identity("x") == "x"  # caches made before revisions stay valid


def test_server_stops_on_error_inside_block(tmp_path):
    before = servers()
    with pytest.raises(RuntimeError), embedded_server(ModelSpec(n_ctx=512), tmp_path):
        assert len(servers() - before) == 1
        raise RuntimeError("boom")
    assert servers() - before == set()


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(LongwriterError, match="gguf_path .*missing.gguf: file not found"), \
            embedded_server(ModelSpec(gguf_path=str(tmp_path / "missing.gguf")), tmp_path):
        pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_no_orphan_server_when_stage_is_stopped(tmp_path, sig):
    """A stage stopped by SIGTERM/Ctrl-C stops its server; one killed with -9 takes it down too (PDEATHSIG)."""
    import polars as pl
    pl.DataFrame({"id": ["a"], "prompt": ["Write a 2000-word essay about the sea."], "lang": ["en"],
                  "source": ["t"], "required_words": [2000], "estimated_words": [None]},
                 schema_overrides={"estimated_words": pl.Int64}).write_parquet(tmp_path / "in.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "llm": {"cache_dir": str(tmp_path / "cache")},
        "plan": {"generator": {"provider": "embedded", "n_ctx": 1024},
                 "sampling": {"max_tokens": 800, "temperature": 0.7, "top_p": 0.95, "seed": 0}}}))
    before = servers()
    proc = subprocess.Popen([sys.executable, "-m", "stages.plan", "--params", str(tmp_path / "params.yaml"),
                             "--instructions", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "p.parquet"),
                             "--failures", str(tmp_path / "f.parquet"), "--metrics", str(tmp_path / "m.json"),
                             "--timings", str(tmp_path / "t.json")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (servers() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers() - before, "the stage never started its server"
    time.sleep(2)  # let it reach the model call
    os.kill(proc.pid, sig)
    out = proc.communicate(timeout=60)[0].decode()
    deadline = time.monotonic() + 20
    while servers() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers() - before == set(), out
    assert proc.returncode != 0
    assert not (tmp_path / "p.parquet").exists()


@pytest.fixture(scope="module")
def in_process_llama():
    from llama_cpp import Llama

    return Llama(str(default_gguf()), n_ctx=2048, n_threads=2, flash_attn=True, logits_all=False, verbose=False)


def test_lazy_grammar_sampling_writes_the_same_greedy_reply(in_process_llama, monkeypatch):
    from llama_cpp import llama as llama_module

    from longwriter.judge import RATING_SCHEMA
    from longwriter.llm import llama_server

    def reply(schema: dict) -> str:
        in_process_llama.reset()
        out = in_process_llama.create_chat_completion(
            [{"role": "user", "content": "Rate this essay from 1 to 5 on each dimension, analysis first, in JSON. "
                                         "Essay: Rivers flow to the sea and carry sediment with them."}],
            temperature=0.0, max_tokens=80, response_format={"type": "json_object", "schema": schema})
        return out["choices"][0]["message"]["content"]

    own = reply(RATING_SCHEMA)
    monkeypatch.setattr(llama_module.Llama, "_init_sampler", llama_server._init_sampler)
    lazy = reply(RATING_SCHEMA)
    assert lazy == own and len(own) > 40


def test_lazy_grammar_sampling_keeps_sampled_replies_in_the_schema(in_process_llama, monkeypatch):
    from llama_cpp import llama as llama_module

    from longwriter.llm import llama_server

    monkeypatch.setattr(llama_module.Llama, "_init_sampler", llama_server._init_sampler)
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                               "count": {"type": "integer", "enum": [1, 2, 3]}},
              "required": ["colour", "count"], "additionalProperties": False}
    for seed in range(4):  # a high temperature: the token drawn without the grammar is mostly rejected
        in_process_llama.reset()
        out = in_process_llama.create_chat_completion(
            [{"role": "user", "content": "Name a colour and a small number."}], temperature=1.5, seed=seed,
            max_tokens=60, response_format={"type": "json_object", "schema": schema})
        data = json.loads(out["choices"][0]["message"]["content"])
        assert data["colour"] in {"red", "green", "blue"} and data["count"] in {1, 2, 3}, data


def test_the_penalty_window_is_part_of_the_embedded_identity():
    """A write with penalties over 1,024 tokens is another model's answer than one over 64: never replayed."""
    assert embedded_identity(ModelSpec()) == embedded_identity(ModelSpec(penalty_last_n=64))
    assert embedded_identity(ModelSpec(penalty_last_n=1024)).endswith(":penalty_last_n-1024:kv-exact")
    with pytest.raises(ValueError):
        ModelSpec(penalty_last_n=-1)
