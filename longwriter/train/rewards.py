"""The rewards of the ``grpo`` stage, each a function over (prompt, completion) in TRL's reward form.

TRL calls each with ``prompts`` and ``completions`` (conversational: lists of messages), ``completion_ids`` and
every other column of the prompt dataset as keyword arguments (here ``required`` and ``required_min``: the words
the prompt asks for, a range for a prompt that states none and has a length target),
and weighs them with ``GRPOConfig.reward_weights``: a completion's reward is r = sum_k w_k * reward_k. A judge that
could not rate a completion gives None, never a made-up score. TRL 1.16 alone would sum the others over it (its
``nansum``: a None counts as 0, inside the group's mean), so the stage masks that completion out of its group
(``longwriter.train.grpo.judge_masking_trainer``): all its rewards NaN (TRL's None), no part in its group's mean
and std, and advantage 0 (the formula: ``longwriter.train.grpo``).

- ``length``: LongBench-Write's length score S_l of the completion's effective words (the words before it falls
  into a loop, ``longwriter.repetition.degeneration``) against the required length, scaled to [0, 1]: 1 at the
  required length, falling linearly to 0 at a third of it or four times it (the paper's own curve); for a
  length target's range [min, max]: 1 anywhere inside it, the same curve against the bound it misses.
- ``quality``: the judge's six-dimension rating (``longwriter.judge.rate``), S_q scaled to [0, 1], asked
  through the project's client: cached (a rerun of the same completions pays nothing), concurrent, retried and
  counted; a failed judgement is recorded (``JudgeReward.failures``: a row with the cause, ``llm_error`` or
  ``unusable_output``) and rewards None, which masks the completion out of its group (above).
- ``repetition``: minus the share of word n-grams that repeat an earlier one (postprocess's measure,
  ``longwriter.repetition.repetition``): 0 for text that never repeats itself, towards -1 for a loop. TRL's
  soft overlong punishment (``trl.rewards.get_soft_overlong_punishment``) is added by the stage beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from longwriter.failures import failure_row
from longwriter.judge import DIMENSIONS, JudgeConfig, rate
from longwriter.llm import CallStats, ClientSettings, Endpoint, LLMClient, ResponseCache
from longwriter.llm.runner import run_each
from longwriter.repetition import degeneration, repetition
from longwriter.scoring import dimension_score, quality_score, range_length_score


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages (the assistant's turns)."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def prompt_text(prompt: Any) -> str:
    """The request of a TRL prompt: a string, or the last user turn of a conversational prompt."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def length_reward(completions: list[Any], required: list[int], required_min: list[int] | None = None,
                  **_: Any) -> list[float]:
    """S_l / 100 of each completion's effective words against its required words, or against the range
    [required_min, required] of a prompt's length target (1 anywhere inside it)."""
    lows = required if required_min is None else required_min
    return [range_length_score(int(low), int(req), degeneration(completion_text(c))[0]) / 100.0
            for c, req, low in zip(completions, required, lows, strict=True)]


def repetition_reward(n: int = 4) -> Callable[..., list[float]]:
    """Minus the share of repeated word n-grams of each completion (postprocess's ``repetition_n``)."""
    def repetition_penalty(completions: list[Any], **_: Any) -> list[float]:
        return [-repetition(completion_text(c), n) for c in completions]
    return repetition_penalty


@dataclass
class JudgeReward:
    """The judge's S_q / 100 of each completion; an async callable, which TRL runs on its own event loop.

    ``endpoint`` must already have its URL (the stage starts the judge's server in the main thread); each call
    opens a client on TRL's loop over the shared ``cache``, so the call stats add up in ``stats``.

    Under a launcher each process has its own instance and rates its own slice of every generation batch: process
    ``rank`` holds completions ``rank * n`` to ``rank * n + n - 1`` of it (TRL's split). A failure is named by that
    place in the whole batch (``step<call>:completion<index>``), so the ids of all processes are distinct, and the
    same as a one-process run's; ``gather_judge`` collects every process's failures and stats.
    """

    endpoint: Endpoint
    cache: ResponseCache
    settings: ClientSettings
    judge: JudgeConfig
    template: str | None = None
    stats: CallStats = field(default_factory=CallStats)
    failures: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    rank: int = 0   # this process's index in the launch (the stage sets it from the trainer's arguments)
    # the name TRL logs this reward under (rewards/judge_quality/mean): an instance attribute lookup finds it
    __name__ = "judge_quality"

    async def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float | None]:
        self.step += 1
        async with LLMClient(self.endpoint, self.cache, self.settings) as llm:
            # no bar of its own: TRL's training bar is on screen
            outcomes = await run_each(zip(prompts, completions, strict=True),
                                      lambda pc: rate(llm, prompt_text(pc[0]), completion_text(pc[1]), self.judge,
                                                      self.template))
            _add(self.stats, llm.stats)
        rewards: list[float | None] = []
        for k, outcome in enumerate(outcomes):
            if outcome.rating is None:
                self.failures.append(failure_row("grpo", outcome.reason, outcome.error,
                                                 instruction_id=f"step{self.step}:completion"
                                                                f"{self.rank * len(completions) + k}",
                                                 attempts=outcome.attempts))
                rewards.append(None)
                continue
            q = quality_score({d: dimension_score([outcome.rating.scores[d]]) for d in DIMENSIONS})
            rewards.append(None if q is None else q / 100.0)
        return rewards


def gather_judge(reward: JudgeReward | None, gather_object: Callable[[list[Any]], list[Any]]
                 ) -> tuple[list[dict[str, Any]], CallStats | None]:
    """Every process's judge failures and summed call stats, on every process. ``gather_object`` is accelerate's
    (``accelerate.utils.gather_object``: a collective, so every process of the launch calls this)."""
    if reward is None:
        return [], None
    failures = gather_object(list(reward.failures))
    total = CallStats()
    for stats in gather_object([reward.stats]):
        _add(total, stats)
    return failures, total


def _add(total: CallStats, more: CallStats) -> None:
    for name, value in vars(more).items():
        setattr(total, name, getattr(total, name) + value)
