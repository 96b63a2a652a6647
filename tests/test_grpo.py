"""The grpo stage: each reward against hand-computed values, the prompts it trains on, a failed judgement masked out
of its group's advantages (TRL's own advantage code, on a tiny model), and the stage end to end on a tiny model with
the fake server as judge (a failed judgement is masked and a rerun pays only for it again)."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest
from conftest import tiny_llama

from longwriter.failures import Failures
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings, Endpoint, ModelSpec, ResponseCache
from longwriter.schemas import validate
from longwriter.train.grpo import GRPOSettings, judge_masking_trainer, rl_prompts, run_grpo
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
    # max_prompts samples the rest: each prompt it leaves out is a left_out row, never neither
    sampled, more = rl_prompts(GRPOSettings(pool=str(pool), max_completion_length=128, max_prompts=2), selected,
                               plans)
    left = {f["instruction_id"] for f in more if f["reason"] == "left_out"}
    assert sampled.height == 2 and len(left) == 1 and "grpo.max_prompts 2" in more[-1]["error"]
    assert left | set(sampled["id"]) == set(prompts["id"]) and not left & set(sampled["id"])


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


def test_the_stage_trains_masks_a_failed_judgement_and_a_rerun_pays_only_for_it_again(fake_server, policy_dir,
                                                                                       tmp_path):
    selected, plans = _instructions(tmp_path)
    cfg = GRPOSettings(use_selected=True, pool=None, num_generations=2, max_completion_length=128, overlong_buffer=16,
                       train=TrainSettings(learning_rate=1e-5, max_steps=2, per_device_train_batch_size=2))
    # the last of the first run's 4 judgements fails (HTTP 500, no retry): the second step's, so the rerun, whose
    # first step's update is the same, samples the same completions
    with fake_server(script=["ok", "ok", "ok", "500"]) as srv:
        judge = JudgeConfig(model=ModelSpec(provider="openai", base_url=srv.base_url, model="judge"))
        settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_retries=0)
        runs = []
        for attempt in range(2):
            out = tmp_path / f"run{attempt}"
            result = run_grpo(cfg, judge, settings, policy_dir, selected, plans, out / "grpo", out / "m.json",
                              out / "r.csv", out / "f.parquet", prompts_output=out / "prompts.parquet")
            runs.append((result, srv.requests_count()))
    first, paid_after_first = runs[0]
    again, paid_after_second = runs[1]
    # 2 steps x one group of 2 completions: 4 judgements, and the rerun samples the same completions: the 3 judged
    # are cached, the failed one is asked again (and judged)
    assert paid_after_first == 4 and paid_after_second == 5
    assert first["judge_llm"]["sent_calls"] == 3 and first["judge_llm"]["failed_calls"] == 1  # sent: paid for
    assert again["judge_llm"]["cache_hits"] == 3 and again["judge_llm"]["sent_calls"] == 1
    # the failed judgement's completion was masked out of its group (a row each), none in the rerun
    assert first["judge_failed"] == first["masked_completions"] == 1
    assert again["judge_failed"] == again["masked_completions"] == 0
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
    assert sorted(failures["reason"]) == ["llm_error", "no_required_length", "over_max_length"]
    # the prompts trained on, and the failures rows of the others: each selected instruction is one of them
    trained = pl.read_parquet(tmp_path / "run0" / "prompts.parquet")
    assert dict(trained.select("id", "required").iter_rows()) == {"planned": 15, "stated": 20}


def _advantages(tokenizer, tmp_path, trainer_class, length, quality, group, **extra):
    """TRL's advantages of one generation batch (``GRPOTrainer._generate_and_score_completions``, on a tiny model)
    whose completions, in TRL's order (groups of ``group`` contiguous), get the rewards ``length`` (a sync function,
    as the stage's length reward is) and ``quality`` (an async one, as the judge is; None: a failed judgement),
    weighed 1 and 2. One token per completion: the rewards do not read them."""
    from datasets import Dataset
    from trl import GRPOConfig

    def length_like(completions, **_):
        return length[:len(completions)]

    async def judge_like(completions, **_):
        return quality[:len(completions)]

    prompt = [{"role": "user", "content": "Write."}]
    args = GRPOConfig(output_dir=str(tmp_path / "out"), num_generations=group, per_device_train_batch_size=len(length),
                      max_completion_length=1, beta=0.0, reward_weights=[1.0, 2.0], report_to=[], use_cpu=True)
    if trainer_class is not None:
        extra["judge"] = judge_like
    else:
        from trl import GRPOTrainer as trainer_class
    trainer = trainer_class(model=tiny_llama(tokenizer), reward_funcs=[length_like, judge_like], args=args,
                            train_dataset=Dataset.from_list([{"prompt": prompt}]), processing_class=tokenizer,
                            **extra)
    batch = trainer._generate_and_score_completions([{"prompt": prompt}] * len(length))
    return trainer, batch["advantages"].tolist()


def test_a_failed_judgement_is_masked_out_of_its_group_s_advantages(tokenizer, tmp_path):
    # two groups of 4: in the first the judge failed on completion 1, in the second on all but completion 5
    length = [0.2, 0.9, 0.5, 0.1, 0.3, 0.6, 0.8, 0.4]
    quality = [0.5, None, 0.25, 1.0, None, 0.75, None, None]
    trainer, masked = _advantages(tokenizer, tmp_path / "masked", judge_masking_trainer(), length, quality, group=4)
    # the same first group without its failed completion, a group of 3, by plain TRL: its advantages are the others'
    _, without = _advantages(tokenizer, tmp_path / "without", None, [0.2, 0.5, 0.1], [0.5, 0.25, 1.0], group=3)
    assert [masked[k] for k in (0, 2, 3)] == pytest.approx(without, abs=1e-5)
    assert masked[1] == 0.0
    # a group with one judged completion has no baseline to beat (no std): no completion of it moves the policy
    assert masked[4:] == [0.0] * 4
    assert trainer.masked_completions == 4
    # the logged reward means leave the masked completions out, every reward's (the combined one too)
    assert trainer._metrics["train"]["rewards/length_like/mean"][-1] == pytest.approx((0.2 + 0.5 + 0.1 + 0.6) / 4)
    assert trainer._metrics["train"]["reward"][-1] == pytest.approx(
        (0.2 + 1.0 + 0.5 + 0.5 + 0.1 + 2.0 + 0.6 + 1.5) / 4)
    # the test can tell: TRL alone counts the failed judgement as quality 0 inside its group's baseline
    _, plain = _advantages(tokenizer, tmp_path / "plain", None, length, quality, group=4)
    assert plain[1] != 0.0 and [plain[k] for k in (0, 2, 3)] != pytest.approx(without, abs=1e-3)
