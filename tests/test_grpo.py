"""The grpo stage: each reward against hand-computed values, the prompts it trains on, and the stage end to end
on a tiny model with the fake server as judge (a rerun pays for no judgement twice)."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest
from conftest import tiny_llama

from longwriter.failures import Failures
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings, Endpoint, ModelSpec, ResponseCache
from longwriter.schemas import validate
from longwriter.train.grpo import GRPOSettings, rl_prompts, run_grpo
from longwriter.train.rewards import JudgeReward, length_reward, repetition_reward
from longwriter.train.trainer import TrainSettings

DISTINCT = " ".join(f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(40)).replace("w", "")


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_length_reward_is_s_l_of_the_effective_words_over_100():
    en50 = " ".join(["word"] * 50)
    zh75 = "".join(chr(0x4E00 + 7 * i) for i in range(75))  # 75 different ideographs (no loop)
    loop = DISTINCT + " the sea was calm" * 30  # 40 written words, then a loop from the phrase's second copy
    rewards = length_reward([assistant(en50), assistant(zh75), assistant(""), en50, assistant(loop)],
                            required=[100, 100, 100, 50, 44])
    # 50 of 100 words: 1 - (100/50 - 1) / 2 = 0.5; 75 of 100 characters: 1 - (100/75 - 1) / 2; an empty answer 0;
    # a plain-string completion of exactly its words 1; the loop counts its 44 words before the loop, not 160
    assert rewards == pytest.approx([0.5, 1 - (100 / 75 - 1) / 2, 0.0, 1.0, 1.0])


def test_repetition_reward_is_minus_the_share_of_repeated_ngrams():
    reward = repetition_reward(4)
    # "a b c d" five times: 17 4-grams, 4 distinct: 1 - 4/17 repeat
    looped = " ".join(["alpha beta gamma delta"] * 5)
    assert reward([assistant(DISTINCT), assistant(looped), assistant("")]) == pytest.approx(
        [0.0, -round(1 - 4 / 17, 4), 0.0])
    assert reward.__name__ == "repetition_penalty"


def test_judge_reward_scales_s_q_and_gives_no_reward_for_a_failed_judgement(fake_server, tmp_path):
    # the fake judge replies with the JSON the schema asks for: scores from the enum 1..5
    with fake_server(script=["ok", "500"]) as srv:
        endpoint = Endpoint(srv.base_url, "judge", "openai:judge", "json_schema")
        with ResponseCache(tmp_path / "r.sqlite") as cache:
            reward = JudgeReward(endpoint, cache, ClientSettings(cache_dir=str(tmp_path), max_retries=0),
                                 JudgeConfig(max_attempts=1))
            prompts = [[{"role": "user", "content": f"Write story {i}."}] for i in range(2)]
            got = asyncio.run(reward(prompts, [assistant("One."), assistant("Two.")]))
    # the two calls race: whichever the server answered with HTTP 500 gets no reward, never a made-up one
    assert got.count(None) == 1 and len(reward.failures) == 1 and reward.failures[0]["reason"] == "llm_error"
    rated = next(g for g in got if g is not None)
    assert reward.failures[0]["instruction_id"] == f"step1:completion{got.index(None)}"
    assert 0.0 <= rated <= 1.0 and rated * 24 == pytest.approx(round(rated * 24))  # sum of 6 (score - 1) / 24
    assert reward.stats.sent_calls == 1 and reward.stats.failed_calls == 1


def _instructions(tmp_path):
    from longwriter.schemas import Instructions, Plans, write_checked

    write_checked(pl.DataFrame({"id": ["stated", "planned", "neither", "long"],
                                "prompt": ["Write 20 words.", "Write a poem.", "Write.", "Write 5000 words."],
                                "lang": ["en"] * 4, "source": ["t"] * 4, "required_words": [20, None, None, 5000],
                                "estimated_words": [None] * 4},
                               schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64}),
                  Instructions, tmp_path / "selected.parquet")
    write_checked(pl.DataFrame({"instruction_id": ["planned", "planned"], "section": [1, 2],
                                "main_point": ["a", "b"], "words": [7, 8], "attempts": [1, 1]}),
                  Plans, tmp_path / "plans.parquet")
    return tmp_path / "selected.parquet", tmp_path / "plans.parquet"


def test_prompts_take_the_stated_length_or_the_plans_and_leave_out_the_rest(tmp_path):
    selected, plans = _instructions(tmp_path)
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "Write a 10-word toast.", "length": 10}\n')
    cfg = GRPOSettings(pool=str(pool), max_completion_length=128)
    prompts, failures = rl_prompts(cfg, selected, plans)
    assert dict(prompts.select("id", "required").iter_rows()) == {"stated": 20, "planned": 15, "pool:0": 10}
    assert {f["instruction_id"]: f["reason"] for f in failures} == {"neither": "no_required_length",
                                                                   "long": "over_max_length"}
    assert "5000 words need about 12564 tokens > max_completion_length 128" in failures[-1]["error"]


def test_settings_refuse_a_group_of_one_and_a_buffer_past_the_cap():
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOSettings(num_generations=1)
    with pytest.raises(ValueError, match="overlong_buffer"):
        GRPOSettings(max_completion_length=64, overlong_buffer=64)


@pytest.fixture(scope="module")
def policy_dir(tokenizer, tmp_path_factory):
    from longwriter.train.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("grpo") / "sft"
    save_checkpoint(tiny_llama(tokenizer), tokenizer, out)
    return out


def test_the_stage_trains_writes_curves_and_a_rerun_pays_no_judgement_twice(fake_server, policy_dir, tmp_path):
    selected, plans = _instructions(tmp_path)
    cfg = GRPOSettings(use_selected=True, pool=None, num_generations=2, max_completion_length=128, overlong_buffer=16,
                       train=TrainSettings(learning_rate=1e-5, max_steps=2, per_device_train_batch_size=2))
    with fake_server() as srv:
        judge = JudgeConfig(model=ModelSpec(provider="openai", base_url=srv.base_url, model="judge"))
        settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_retries=0)
        runs = []
        for attempt in range(2):
            out = tmp_path / f"run{attempt}"
            result = run_grpo(cfg, judge, settings, policy_dir, selected, plans, out / "grpo", out / "m.json",
                              out / "r.csv", out / "f.parquet")
            runs.append((result, srv.requests_count()))
    first, paid_after_first = runs[0]
    again, paid_after_second = runs[1]
    # 2 steps x one group of 2 completions: 4 judgements, and the rerun samples the same completions: no new call
    assert paid_after_first == 4 and paid_after_second == 4
    assert first["judge_llm"]["sent_calls"] == 4 and again["judge_llm"]["cache_hits"] == 4
    assert first["steps"] == 2 and first["prompts"] == 2 and first["left_out"] == {"no_required_length": 1,
                                                                                    "over_max_length": 1}
    for key in ("reward", "length", "quality", "repetition", "overlong", "completion_length", "clipped_ratio",
                "kl"):
        assert key in first["last"]
    assert 0.0 <= first["last"]["quality"] <= 1.0 and first["last"]["completion_length"] <= 128
    curve = pl.read_csv(tmp_path / "run0" / "r.csv")
    assert curve["step"].to_list() == [1, 2]
    assert (tmp_path / "run0" / "grpo" / "model.safetensors").is_file()
    failures = validate(pl.read_parquet(tmp_path / "run0" / "f.parquet"), Failures, "grpo")
    assert sorted(failures["reason"]) == ["no_required_length", "over_max_length"]
