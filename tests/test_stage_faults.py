"""Stages under faults and crashes: failed rows are recorded, never dropped; a killed stage resumes from the
cache without paying again for completed calls."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from longwriter.agentwrite.plan import PlanConfig, run_plan
from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.llm import ClientSettings, ModelSpec, Sampling

ROOT = Path(__file__).parent.parent


def write_instructions(path: Path, n: int) -> None:
    pl.DataFrame({
        "id": [f"i{k}" for k in range(n)], "prompt": [f"Write a long story number {k} about a lighthouse."
                                                       for k in range(n)],
        "lang": ["en"] * n, "source": ["test"] * n, "required_words": [300] * n, "estimated_words": [None] * n,
    }, schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64}).write_parquet(path)


def write_plans(path: Path, n: int, sections: int) -> None:
    pl.DataFrame([{"instruction_id": f"i{k}", "section": s, "main_point": f"Part {s} of story {k}", "words": 80,
                   "attempts": 1} for k in range(n) for s in range(1, sections + 1)]).write_parquet(path)


def fake_spec(srv) -> ModelSpec:
    return ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model")


def fast_settings(tmp_path: Path, **kw) -> ClientSettings:
    return ClientSettings(**({"cache_dir": str(tmp_path / "cache"), "max_retries": 1, "backoff_base_s": 0.01,
                              "backoff_max_s": 0.02, "request_timeout_s": 2.0} | kw))


def test_plan_records_every_failed_instruction(fake_server, tmp_path):
    write_instructions(tmp_path / "in.parquet", 4)
    with fake_server(faults={"500": 1.0}) as srv:
        cfg = PlanConfig(generator=fake_spec(srv))
        m = run_plan(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "fail.parquet",
                     tmp_path / "m.json", cfg, fast_settings(tmp_path))
    failures = pl.read_parquet(tmp_path / "fail.parquet")
    assert m["failed"] == 4 and m["planned"] == 0 and m["llm"]["retries"] == 4
    assert sorted(failures["instruction_id"]) == ["i0", "i1", "i2", "i3"]
    assert all("gave up after 2 attempts" in e and "HTTP 500" in e for e in failures["error"])
    assert set(failures["attempts"]) == {1}  # one plan request, retried once by the client
    assert pl.read_parquet(tmp_path / "plans.parquet").height == 0


def test_plan_under_faults_matches_fault_free_run(fake_server, tmp_path):
    write_instructions(tmp_path / "in.parquet", 6)
    outputs = []
    for name, faults in (("clean", None), ("faulty", {"429": 0.1, "500": 0.1, "malformed": 0.1, "drop": 0.1})):
        d = tmp_path / name
        d.mkdir()
        with fake_server(faults=faults, seed=3) as srv:
            cfg = PlanConfig(generator=fake_spec(srv), sampling=Sampling(temperature=0.0))
            m = run_plan(tmp_path / "in.parquet", d / "plans.parquet", d / "fail.parquet", d / "m.json", cfg,
                         fast_settings(d, max_retries=8))
        assert m["failed"] == 0
        outputs.append((pl.read_parquet(d / "plans.parquet"), m))
    assert outputs[0][0].equals(outputs[1][0])
    assert outputs[1][1]["llm"]["retries"] > 0 and outputs[0][1]["llm"]["retries"] == 0


def test_write_records_failed_instruction_with_its_section(fake_server, tmp_path):
    write_instructions(tmp_path / "in.parquet", 1)
    write_plans(tmp_path / "plans.parquet", 1, 3)
    # sections 1 and 2 succeed; section 3 fails twice (max_retries=1) and fails the instruction
    with fake_server(script=["ok", "ok", "503", "503"]) as srv:
        cfg = WriteConfig(generator=fake_spec(srv), max_continuations=0)
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", cfg, fast_settings(tmp_path))
    failures = pl.read_parquet(tmp_path / "f.parquet").to_dicts()
    assert m["failed"] == 1 and m["sections"] == 0
    assert failures == [{"stage": "write", "instruction_id": "i0", "section": 3, "attempts": 2,
                         "reason": "llm_error", "error": failures[0]["error"]}]
    assert "HTTP 503" in failures[0]["error"]


def _params(path: Path, srv, cache_dir: Path) -> None:
    path.write_text(yaml.safe_dump({
        "llm": {"cache_dir": str(cache_dir), "max_concurrency": 2, "max_retries": 2, "backoff_base_s": 0.01},
        "write": {"generator": {"provider": "openai", "base_url": srv.base_url, "model": "fake-model"},
                  "max_continuations": 0},
    }))


def _run_write(workdir: Path, params: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stages.write", "--params", str(params), "--instructions",
         str(workdir / "in.parquet"), "--plans", str(workdir / "plans.parquet"), "--output",
         str(workdir / "sections.parquet"), "--failures", str(workdir / "fail.parquet"), "--metrics",
         str(workdir / "m.json"), "--timings", str(workdir / "t.json")], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)


def test_kill9_mid_stage_then_resume_pays_only_for_missing_calls(fake_server, tmp_path):
    n, sections = 3, 4
    for d in ("killed", "clean"):
        (tmp_path / d).mkdir()
        write_instructions(tmp_path / d / "in.parquet", n)
        write_plans(tmp_path / d / "plans.parquet", n, sections)
    with fake_server(base_latency_s=0.15) as srv:
        killed = tmp_path / "killed"
        _params(killed / "params.yaml", srv, killed / "cache")
        proc = _run_write(killed, killed / "params.yaml")
        deadline = time.monotonic() + 60
        while sum(e["outcome"] == "ok" for e in srv.log) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # requests in flight at the kill finish on the server (paid, never received)
        assert not (killed / "sections.parquet").exists()  # no half-written output
        with sqlite3.connect(killed / "cache" / "responses.sqlite") as db:
            cached = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 0 < cached < n * sections
        before = len(srv.log)
        proc = _run_write(killed, killed / "params.yaml")
        out = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 0, out
        resumed = srv.log[before:]
        # the rerun paid exactly for the calls that had not completed before the kill
        assert len(resumed) == n * sections - cached
        # an uninterrupted run in a fresh workspace (own cache) produces the same table
        clean = tmp_path / "clean"
        _params(clean / "params.yaml", srv, clean / "cache")
        proc = _run_write(clean, clean / "params.yaml")
        assert proc.wait(timeout=120) == 0
    a = pl.read_parquet(killed / "sections.parquet").drop("latency_s")
    b = pl.read_parquet(clean / "sections.parquet").drop("latency_s")
    assert a.height == n * sections and a.equals(b)


def test_empty_input_writes_empty_outputs_without_calls(fake_server, tmp_path):
    from longwriter.schemas import Instructions, empty
    empty(Instructions).write_parquet(tmp_path / "in.parquet")
    with fake_server() as srv:
        m = run_plan(tmp_path / "in.parquet", tmp_path / "p.parquet", tmp_path / "pf.parquet", tmp_path / "pm.json",
                     PlanConfig(generator=fake_spec(srv)), fast_settings(tmp_path))
        w = run_write(tmp_path / "in.parquet", tmp_path / "p.parquet", tmp_path / "s.parquet", tmp_path / "sf.parquet",
                      tmp_path / "sm.json", WriteConfig(generator=fake_spec(srv)), fast_settings(tmp_path))
        assert srv.requests_count() == 0
    assert m["instructions"] == 0 and m["success_rate"] == 0.0 and w["sections"] == 0
    assert pl.read_parquet(tmp_path / "s.parquet").height == 0 and pl.read_parquet(tmp_path / "sf.parquet").height == 0


def _complete(n: int) -> str:
    return " ".join(["The lighthouse keeper counted the ships."] * n)


def test_write_rewrites_a_cut_off_paragraph_with_a_new_seed(fake_server, tmp_path):
    write_instructions(tmp_path / "in.parquet", 1)
    write_plans(tmp_path / "plans.parquet", 1, 2)
    cut = ("The lighthouse keeper counted the ships and then the", "length")
    with fake_server(replies=[cut, _complete(12), _complete(12)]) as srv:
        cfg = WriteConfig(generator=fake_spec(srv), max_continuations=0, max_attempts=2)
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", cfg, fast_settings(tmp_path))
        seeds = [b["seed"] for b in srv.bodies]
    sections = pl.read_parquet(tmp_path / "s.parquet")
    assert m["failed"] == 0 and m["sections_rewritten"] == 1
    assert sections["attempts"].to_list() == [2, 1] and sections["finish_reason"].to_list() == ["stop", "stop"]
    assert seeds[0] != seeds[1]  # the rewrite is a different request, not a replay of the cut one
    assert all(t.endswith(".") for t in sections["text"])


def test_write_drops_an_instruction_whose_paragraph_stays_incomplete(fake_server, tmp_path):
    write_instructions(tmp_path / "in.parquet", 1)
    write_plans(tmp_path / "plans.parquet", 1, 2)
    refusal = "I'm sorry, but I can't help with writing this story."
    with fake_server(replies=[_complete(12), refusal, refusal]) as srv:
        cfg = WriteConfig(generator=fake_spec(srv), max_continuations=0, max_attempts=2)
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", cfg, fast_settings(tmp_path))
    failures = pl.read_parquet(tmp_path / "f.parquet").to_dicts()
    assert m["failed"] == 1 and m["sections"] == 0 and m["failures"] == {"refusal": 1}
    assert [(f["section"], f["attempts"], f["reason"]) for f in failures] == [(2, 2, "refusal")]


def test_a_cut_reply_is_not_kept_without_continuations(fake_server, tmp_path):
    """The held-out probe: an HTTP 200 cut short with max_continuations 0 was kept as the section."""
    write_instructions(tmp_path / "in.parquet", 1)
    write_plans(tmp_path / "plans.parquet", 1, 1)
    cut = ("The lighthouse keeper counted the ships and then the", "length")
    with fake_server(replies=[cut, cut]) as srv:
        cfg = WriteConfig(generator=fake_spec(srv), max_continuations=0, max_attempts=2)
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", cfg, fast_settings(tmp_path))
    assert m["sections"] == 0 and m["failures"] == {"cut_off": 1}


def test_general_keeps_complete_answers_only(fake_server, tmp_path):
    from longwriter.train.general import GeneralConfig, run_general

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "g1", "prompt": "Name a colour."}\n{"id": "g2", "prompt": "Say hello."}\n')
    cut = ("Blue is a colour that many people", "length")
    # g1 and g2 ask concurrently: the fake serves replies in arrival order, so each gets one of the first two
    with fake_server(replies=[cut, cut, "Sure, here is one:\nBlue.", cut]) as srv:
        cfg = GeneralConfig(prompts=str(prompts), generator=fake_spec(srv), max_attempts=2)
        m = run_general(cfg, fast_settings(tmp_path, max_concurrency=1), tmp_path / "chat.parquet",
                        tmp_path / "f.parquet", tmp_path / "m.json")
    chat = pl.read_parquet(tmp_path / "chat.parquet")
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert m["examples"] == 1 and m["failures"] == {"cut_off": 1}
    assert chat["messages"][0].to_list()[1]["content"] == "Blue."
    assert failures["reason"].to_list() == ["cut_off"] and failures["attempts"].to_list() == [2]


def test_general_answers_the_first_max_prompts_and_counts_the_rest(fake_server, tmp_path):
    from longwriter.train.general import GeneralConfig, run_general

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"id": "g{i}", "prompt": "Say {i}."}}\n' for i in range(3)))
    with fake_server() as srv:
        cfg = GeneralConfig(prompts=str(prompts), generator=fake_spec(srv), max_prompts=2)
        m = run_general(cfg, fast_settings(tmp_path), tmp_path / "chat.parquet", tmp_path / "f.parquet",
                        tmp_path / "m.json")
        asked = len(srv.log)
    assert (m["prompts"], m["left_out_by_max_prompts"], asked) == (2, 1, 2)
    assert sorted(pl.read_parquet(tmp_path / "chat.parquet")["id"]) == ["g0", "g1"]


def test_compare_records_requests_one_model_did_not_answer(fake_server, tmp_path):
    from longwriter.eval.compare import CompareConfig, run_compare
    from longwriter.generation import answer_row
    from longwriter.judge import JudgeConfig
    from longwriter.schemas import Answers, empty, write_checked

    def row(model: str, index: int) -> dict:
        request = {"index": index, "prompt": f"Write {index}.", "type": None, "lang": "en", "required": 100,
                   "bucket": "0-500"}
        return answer_row(model, request, 0, f"Answer {index} of {model}.", "stop", 512, 5, 5, 0.1)

    answers = pl.DataFrame([row("a", 0), row("b", 0), row("a", 1), row("b", 2)], schema=empty(Answers).schema)
    write_checked(answers, Answers, tmp_path / "answers.parquet")
    with fake_server() as srv:
        m = run_compare(CompareConfig(pairs=(("a", "b"),), requests=None), JudgeConfig(model=fake_spec(srv)),
                        fast_settings(tmp_path), tmp_path / "answers.parquet", tmp_path / "c.parquet",
                        tmp_path / "f.parquet", tmp_path / "m.json", tmp_path / "elo.csv")
    failures = pl.read_parquet(tmp_path / "f.parquet").filter(pl.col("reason") == "unanswered")
    assert sorted(failures["instruction_id"]) == ["a_vs_b/1", "a_vs_b/2"]
    assert m["a_vs_b"]["unanswered"] == 2 and m["a_vs_b"]["judged"] + m["a_vs_b"]["failed"] == 1
    # the verdicts of the one request both answered are the Elo games; the plot data has a row per model
    games = sum(v is not None for v in pl.read_parquet(tmp_path / "c.parquet").select("a_first", "b_first").row(0))
    assert {r["games"] for r in m["elo"]["ratings"].values()} == {games}
    assert pl.read_csv(tmp_path / "elo.csv")["model"].to_list() == ["a", "b"]


def test_compare_records_requests_neither_model_answered_once(fake_server, tmp_path):
    """Every (pair, request asked) ends as one verdicts row or one unanswered row, never both, never neither: also
    a request neither of the pair answered (another model did, or, read from the answering stage's failures, no
    model did)."""
    from longwriter.eval.compare import CompareConfig, run_compare
    from longwriter.failures import Reason, failure_row, write_failures
    from longwriter.generation import answer_row
    from longwriter.judge import JudgeConfig
    from longwriter.schemas import Answers, empty, write_checked

    def row(model: str, index: int) -> dict:
        request = {"index": index, "prompt": f"Write {index}.", "type": None, "lang": "en", "required": 100,
                   "bucket": "0-500"}
        return answer_row(model, request, 0, f"Answer {index} of {model}.", "stop", 512, 5, 5, 0.1)

    # 0: all answered; 1: only c (neither a nor b); 2: no model; 3: only a; d answered nothing at all
    answered = [("a", 0), ("b", 0), ("c", 0), ("c", 1), ("a", 3)]
    write_checked(pl.DataFrame([row(m, i) for m, i in answered], schema=empty(Answers).schema), Answers,
                  tmp_path / "answers.parquet")
    asked = [(m, i) for m in "abcd" for i in range(4)]
    # the answering stage's failures: the requests asked that got no answer, and request 4, never asked
    write_failures([failure_row("longbench_answer", Reason.LLM_ERROR, "HTTP 500", instruction_id=f"{m}/{i}")
                    for m, i in asked if (m, i) not in answered]
                   + [failure_row("longbench_answer", Reason.LEFT_OUT, "past longbench.per_lang 4 for en",
                                  instruction_id=f"{m}/4") for m in "abcd"], tmp_path / "answer_failures.parquet")
    pairs = (("a", "b"), ("c", "a"), ("d", "c"))
    with fake_server() as srv:
        m = run_compare(CompareConfig(pairs=pairs, requests=None), JudgeConfig(model=fake_spec(srv)),
                        fast_settings(tmp_path), tmp_path / "answers.parquet", tmp_path / "c.parquet",
                        tmp_path / "f.parquet", tmp_path / "m.json",
                        answer_failures=tmp_path / "answer_failures.parquet")
    table = pl.read_parquet(tmp_path / "c.parquet")
    failures = pl.read_parquet(tmp_path / "f.parquet")
    unanswered = failures.filter(pl.col("reason") == "unanswered")
    judged = {f"{a}_vs_{b}/{i}" for a, b, i in table.select("model_a", "model_b", "index").iter_rows()}
    assert unanswered["instruction_id"].is_unique().all() and table.height == len(judged)
    assert not judged & set(unanswered["instruction_id"])
    assert judged | set(unanswered["instruction_id"]) == {f"{a}_vs_{b}/{i}" for a, b in pairs for i in range(4)}
    assert judged == {"a_vs_b/0", "c_vs_a/0"}  # the requests both of the pair answered
    errors = dict(unanswered.select("instruction_id", "error").iter_rows())
    assert errors["a_vs_b/1"] == errors["a_vs_b/2"] == "no answer from a, b"
    assert errors["a_vs_b/3"] == "no answer from b" and errors["d_vs_c/1"] == "no answer from d"
    assert errors["d_vs_c/2"] == "no answer from d, c"
    assert (m["a_vs_b"]["unanswered"], m["c_vs_a"]["unanswered"], m["d_vs_c"]["unanswered"]) == (3, 3, 4)
    assert m["a_vs_b"]["judged"] + m["a_vs_b"]["failed"] == 1 and m["requests"] == 4
    assert m["failures"]["unanswered"] == 10
    # without the answering stage's failures, the request no model answered is not known to the stage (nor is d)
    with fake_server() as srv:
        m = run_compare(CompareConfig(pairs=(("a", "b"),), requests=None), JudgeConfig(model=fake_spec(srv)),
                        fast_settings(tmp_path), tmp_path / "answers.parquet", tmp_path / "c.parquet",
                        tmp_path / "f.parquet", tmp_path / "m.json")
    assert sorted(pl.read_parquet(tmp_path / "f.parquet")["instruction_id"]) == ["a_vs_b/1", "a_vs_b/3"]
    assert m["a_vs_b"]["unanswered"] == 2 and m["requests"] == 3


def test_compare_judges_the_same_seeded_sample_of_requests_for_every_pair(fake_server, tmp_path):
    from longwriter.eval.compare import CompareConfig, run_compare
    from longwriter.generation import answer_row
    from longwriter.judge import JudgeConfig
    from longwriter.schemas import Answers, empty, write_checked

    def row(model: str, index: int) -> dict:
        request = {"index": index, "prompt": f"Write {index}.", "type": None, "lang": "en", "required": 100,
                   "bucket": "0-500"}
        return answer_row(model, request, 0, f"Answer {index} of {model}.", "stop", 512, 5, 5, 0.1)

    answers = pl.DataFrame([row(m, i) for m in "abc" for i in range(6)], schema=empty(Answers).schema)
    write_checked(answers, Answers, tmp_path / "answers.parquet")
    cfg = CompareConfig(pairs=(("a", "b"), ("c", "b")), requests=3, seed=1)
    with fake_server() as srv:
        m = run_compare(cfg, JudgeConfig(model=fake_spec(srv)), fast_settings(tmp_path),
                        tmp_path / "answers.parquet", tmp_path / "c.parquet", tmp_path / "f.parquet",
                        tmp_path / "m.json")
        calls = srv.requests_count()
    table = pl.read_parquet(tmp_path / "c.parquet")
    by_pair = {pair: sorted(table.filter(pl.col("model_a") == pair[0])["index"]) for pair in cfg.pairs}
    assert by_pair[("a", "b")] == by_pair[("c", "b")] and len(by_pair[("a", "b")]) == 3
    assert m["requests"] == 3 and calls == 2 * 3 * 2  # two pairs, three requests, both orders
    # the other three of each pair are accounted for: left out by compare.requests, one row each
    left_out = pl.read_parquet(tmp_path / "f.parquet").filter(pl.col("reason") == "left_out")
    assert sorted(left_out["instruction_id"]) == sorted(f"{a}_vs_{b}/{i}" for a, b in cfg.pairs for i in range(6)
                                                        if i not in by_pair[("a", "b")])
    assert m["left_out_by_requests"] == 3 and m["failures"]["left_out"] == 6
    with pytest.raises(ValueError, match="requests"):
        CompareConfig(requests=0)


def test_a_paragraph_cut_past_its_budget_is_continued_to_a_sentence_end():
    from longwriter.agentwrite.write import needs_more

    cfg = WriteConfig(min_budget_ratio=0.6)
    over = "word " * 120 + "and the"
    assert needs_more(over, 100, "length", cfg)  # past its budget, but cut mid-sentence
    assert not needs_more("word " * 120 + "end.", 100, "length", cfg)
    assert not needs_more(over, 100, "stop", cfg)


@pytest.mark.parametrize("trim", [True, False])
def test_a_paragraph_cut_past_most_of_its_budget_is_trimmed_to_its_last_sentence(fake_server, tmp_path, trim):
    """The 135M writer runs on to its token limit: trimming costs one call where continuing costs two."""
    write_instructions(tmp_path / "in.parquet", 1)
    write_plans(tmp_path / "plans.parquet", 1, 1)
    cut = (_complete(10) + " And then the keeper", "length")  # 60 words in sentences, budget 80: >= 0.6
    with fake_server(replies=[cut, _complete(2)]) as srv:
        cfg = WriteConfig(generator=fake_spec(srv), max_continuations=1, max_attempts=1, trim_cut_off=trim)
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", cfg, fast_settings(tmp_path))
        calls = len(srv.bodies)
    text = pl.read_parquet(tmp_path / "s.parquet")["text"][0]
    assert m["failed"] == 0 and text.endswith("ships.")
    if trim:
        assert calls == 1 and m["sections_trimmed"] == 1 and text == _complete(10)
    else:
        assert calls == 2 and m["sections_trimmed"] == 0 and m["continuation_calls"] == 1
