"""Every row accounted for: for each stage that turns rows into rows, every input row (by id) is an output row or
a failures row with its reason, never both, never neither.

    python -m longwriter.conservation              # this workspace's run (dvc.yaml's paths, params.yaml)
    python -m longwriter.conservation --root DIR   # another run's workspace

A stage's unit is what it turns into one output row: a pool prompt (select), an instruction (plan, write,
postprocess, dpo_pairs, grpo's prompts), a chat sample (general, mix), a (model, request, sample) (ruler,
longbench_answer), a judged answer (longbench), a (pair of models, request) (compare), a text of a set (segments,
nll). Failures rows whose ``section`` names a part of a unit (a plan line removed, one sample of a prompt) are
notes about a unit that may still be an output; the unit is accounted for only by an output row or a whole-unit
failures row, except where the stage's output holds only complete units (write: every planned section written),
so that any row of the unit accounts for it. The check reads the tables only: it is as cheap as reading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from longwriter.config import build, read_params, section
from longwriter.files import read_table

LIST_AT_MOST = 5  # ids shown per problem


@dataclass
class Flow:
    """One stage's units: those that came in, those that came out, those with a failures row."""

    stage: str
    inputs: set[str]
    outputs: set[str]
    failed: set[str]                       # units a whole-unit failures row accounts for
    noted: set[str] = field(default_factory=set)  # units with a row about a part of them only
    missing: str | None = None  # a table the check needs that is not there (the stage has not run)

    @property
    def neither(self) -> set[str]:
        return self.inputs - self.outputs - self.failed

    @property
    def both(self) -> set[str]:
        return self.outputs & self.failed

    @property
    def unknown(self) -> set[str]:
        """Output or failures units that are no input's: a row made up, or an id changed on the way."""
        return (self.outputs | self.failed | self.noted) - self.inputs

    @property
    def ok(self) -> bool:
        return self.missing is None and not (self.neither or self.both or self.unknown)

    def line(self) -> str:
        if self.missing is not None:
            return f"{self.stage:<17} not checked: {self.missing}  FAILED"
        text = (f"{self.stage:<17} {len(self.inputs):>6} in = {len(self.outputs - self.failed):>6} out + "
                f"{len(self.failed - self.outputs):>5} failures rows")
        for name, ids in (("neither", self.neither), ("both", self.both), ("unknown", self.unknown)):
            if ids:
                shown = ", ".join(sorted(ids)[:LIST_AT_MOST]) + (", ..." if len(ids) > LIST_AT_MOST else "")
                text += f"  {name}: {len(ids)} ({shown})"
        return text + ("" if self.ok else "  FAILED")


class Workspace:
    """A run's tables, found by dvc.yaml's ``paths`` and params.yaml, under ``root``."""

    def __init__(self, root: str | Path = ".") -> None:
        self.root = Path(root)
        dvc_yaml = yaml.safe_load((self.root / "dvc.yaml").read_text(encoding="utf-8"))
        self.paths: dict[str, Any] = next(v["paths"] for v in dvc_yaml["vars"] if isinstance(v, dict) and "paths" in v)
        self.params = read_params(self.root / "params.yaml")

    def path(self, *keys: str) -> Path:
        value: Any = self.paths
        for key in keys:
            value = value[key]
        return self.root / value

    def table(self, *keys: str) -> pl.DataFrame:
        return pl.read_parquet(self.path(*keys))

    def failures(self, stage: str) -> pl.DataFrame:
        return self.table("failures", stage)

    def config(self, cls: type, key: str) -> Any:
        return build(cls, section(self.params, key), f"params.yaml:{key}")

    def at(self, relative: str) -> str:
        return str(self.root / relative)


# rows about a part of a unit whatever their section: a plan line removed (the plan is still an output)
PART_REASONS = ("duplicate_point",)


def _is_part() -> pl.Expr:
    return pl.col("section").is_not_null() | pl.col("reason").is_in(PART_REASONS)


def _whole(failures: pl.DataFrame) -> set[str]:
    return set(failures.filter(~_is_part())["instruction_id"])


def _parts(failures: pl.DataFrame) -> set[str]:
    return set(failures.filter(_is_part())["instruction_id"])


def _ids(values: Iterable[Any]) -> set[str]:
    return {str(v) for v in values}


# ------------------------------------------------------------------------------------------------ the stages


def select_flow(ws: Workspace) -> Flow:
    from longwriter.agentwrite.dedup import unique_ids
    from longwriter.agentwrite.pool import load_pools
    from longwriter.agentwrite.select import SelectConfig

    cfg = ws.config(SelectConfig, "select")
    pool = load_pools([ws.at(p) for p in cfg.pools])  # the rows without a user turn are failures rows already
    failures = ws.failures("select").filter(pl.col("reason") != "no_user_turn")
    return Flow("select", _ids(unique_ids(pool["id"])), _ids(ws.table("selected")["id"]), _whole(failures))


def plan_flow(ws: Workspace) -> Flow:
    failures = ws.failures("plan")
    return Flow("plan", _ids(ws.table("selected")["id"]), _ids(ws.table("plans")["instruction_id"]),
                _whole(failures), _parts(failures))


def write_flow(ws: Workspace) -> Flow:
    """An instruction is written when every planned section is; any failures row of it accounts for it (the
    sections written before a failure stay in the table, for postprocess to count)."""
    planned = ws.table("plans").group_by("instruction_id").agg(pl.col("section").sort())
    written = ws.table("sections").group_by("instruction_id").agg(pl.col("section").sort())
    done = planned.join(written, on="instruction_id", suffix="_w").filter(pl.col("section") == pl.col("section_w"))
    failures = ws.failures("write")
    return Flow("write", _ids(planned["instruction_id"]), _ids(done["instruction_id"]),
                _ids(failures["instruction_id"]))


def postprocess_flow(ws: Workspace) -> Flow:
    failures = ws.failures("postprocess")
    return Flow("postprocess", _ids(ws.table("sections")["instruction_id"]), _ids(ws.table("long_samples")["id"]),
                _ids(failures["instruction_id"]))


def general_flow(ws: Workspace) -> Flow:
    from longwriter.train.general import GeneralConfig

    cfg = ws.config(GeneralConfig, "general")
    prompts = read_table(ws.at(cfg.prompts), columns=["id"])
    return Flow("general", _ids(prompts["id"]), _ids(ws.table("general_chat")["id"]),
                _whole(ws.failures("general")))


def mix_flow(ws: Workspace) -> Flow:
    from longwriter.train.mix import MixConfig

    cfg = ws.config(MixConfig, "mix")
    inputs = _ids(pl.read_parquet(ws.at(cfg.long))["id"]) | _ids(pl.read_parquet(ws.at(cfg.general))["id"])
    out = _ids(pl.read_parquet(ws.path("mix") / "train.parquet")["id"]) | _ids(
        pl.read_parquet(ws.path("mix") / "validation.parquet")["id"])
    return Flow("mix", inputs, out, _whole(ws.failures("mix")))


def length_target_flow(ws: Workspace) -> Flow:
    """Every prompt that states no length among its inputs (when enabled): a target row, or a failures row."""
    from longwriter.eval.longbench import LongBenchConfig
    from longwriter.length_target import LengthTargetConfig, wanted
    from longwriter.train.grpo import GRPOSettings

    inputs: set[str] = set()
    if ws.config(LengthTargetConfig, "length_target").enabled:
        pool = ws.config(GRPOSettings, "grpo").pool
        need = wanted(ws.path("selected"), ws.at(pool) if pool else None,
                      ws.at(ws.config(LongBenchConfig, "longbench").input))
        inputs = {f"{s}/{i}" for s, i in need.select("source", "id").iter_rows()}
    targets = ws.table("length_targets")
    failures = ws.failures("length_target").filter(~pl.col("instruction_id").str.starts_with("agreement/"))
    return Flow("length_target", inputs, {f"{s}/{i}" for s, i in targets.select("source", "id").iter_rows()},
                _whole(failures))


def dpo_pairs_flow(ws: Workspace) -> Flow:
    failures = ws.failures("dpo_pairs")
    return Flow("dpo_pairs", _ids(ws.table("selected")["id"]), _ids(ws.table("dpo_pairs")["prompt_id"]),
                _whole(failures), _parts(failures))


def grpo_flow(ws: Workspace) -> Flow:
    """grpo's prompts: every selected instruction (grpo.use_selected) and every prompt of grpo.pool is a prompt it
    trained on (``paths.grpo_prompts``) or a failures row. The judge's rows there are about completions, not
    prompts (``step<N>:completion<i>``, always an error reason): not this check's units."""
    from longwriter.benchmark import read_benchmark
    from longwriter.train.grpo import GRPOSettings

    cfg = ws.config(GRPOSettings, "grpo")
    inputs = _ids(ws.table("selected")["id"]) if cfg.use_selected else set()
    if cfg.pool is not None:
        inputs |= {f"pool:{i}" for i in read_benchmark(ws.at(cfg.pool), allow_unstated=True)["index"]}
    failures = ws.failures("grpo").filter(~pl.col("reason").is_in(["llm_error", "unusable_output"]))
    return Flow("grpo", inputs, _ids(ws.table("grpo_prompts")["id"]), _whole(failures))


def _answer_key(iid: str, sample: Any) -> str:
    return f"{iid}#{0 if sample is None else int(sample)}"


def _answers_flow(ws: Workspace, stage: str, requests: pl.DataFrame, answers_key: str) -> Flow:
    """Every (model, request) of the benchmark file, one sample each: an answer, or a failures row (an error of
    that sample, or a request the stage's size params left out)."""
    from longwriter.eval.answers import EvalConfig

    models = [m.name for m in ws.config(EvalConfig, "eval").models]
    inputs = {_answer_key(f"{m}/{i}", 0) for m in models for i in requests["index"]}
    answers = ws.table(answers_key)
    out = {_answer_key(f"{m}/{i}", s) for m, i, s in answers.select("model", "index", "sample").iter_rows()}
    failures = ws.failures(stage)
    failed = {_answer_key(i, s) for i, s in failures.select("instruction_id", "section").iter_rows()}
    return Flow(stage, inputs, out, failed)


def ruler_flow(ws: Workspace) -> Flow:
    from longwriter.benchmark import read_benchmark
    from longwriter.eval.ruler import RulerConfig

    cfg = ws.config(RulerConfig, "ruler")
    return _answers_flow(ws, "ruler", read_benchmark(ws.at(cfg.input)), "ruler_answers")


def longbench_answer_flow(ws: Workspace) -> Flow:
    from longwriter.benchmark import read_benchmark
    from longwriter.eval.longbench import LongBenchConfig

    cfg = ws.config(LongBenchConfig, "longbench")
    en = ws.at(cfg.en_file) if cfg.en_file else None
    return _answers_flow(ws, "longbench_answer", read_benchmark(ws.at(cfg.input), en_file=en, allow_unstated=True),
                         "longbench_answers")


def longbench_flow(ws: Workspace) -> Flow:
    """Every answer is judged: a quality score, or a failures row."""
    answers = ws.table("longbench_answers").filter(pl.col("sample") == 0)
    scores = ws.table("longbench_scores").filter(pl.col("quality_score").is_not_null())
    return Flow("longbench", {f"{m}/{i}" for m, i in answers.select("model", "index").iter_rows()},
                {f"{m}/{i}" for m, i in scores.select("model", "index").iter_rows()},
                _whole(ws.failures("longbench")))


def compare_flow(ws: Workspace) -> Flow:
    """Every (pair, request asked by longbench_answer): a verdict, or a failures row (unanswered, a failed
    judgement, or left out by compare.requests)."""
    from longwriter.eval.compare import CompareConfig

    cfg = ws.config(CompareConfig, "compare")
    asked = set(ws.table("longbench_answers")["index"]) | {
        int(i.rpartition("/")[2]) for i in ws.failures("longbench_answer").filter(
            pl.col("reason") != "left_out")["instruction_id"]}
    inputs = {f"{a}_vs_{b}/{i}" for a, b in cfg.pairs for i in asked}
    table = ws.table("compare").filter(pl.col("outcome").is_not_null())
    out = {f"{a}_vs_{b}/{i}" for a, b, i in table.select("model_a", "model_b", "index").iter_rows()}
    return Flow("compare", inputs, out, _whole(ws.failures("compare")))


def _text_keys(ws: Workspace) -> set[str]:
    """The analysis stages' texts, as they read them (``segments.text_sets``): set/text_id."""
    from longwriter.eval.segments import text_sets

    sets = text_sets(ws.path("long_samples"), ws.path("longbench_answers"))
    return {f"{name}/{text_id}" for name, texts in sets.items() for text_id, _, _ in texts}


def _texts_flow(ws: Workspace, stage: str) -> Flow:
    out = ws.table(stage)
    failures = ws.failures(stage)
    return Flow(stage, _text_keys(ws), {f"{s}/{t}" for s, t in out.select("set", "text_id").iter_rows()},
                _whole(failures), _parts(failures))


def segments_flow(ws: Workspace) -> Flow:
    return _texts_flow(ws, "segments")


def nll_flow(ws: Workspace) -> Flow:
    return _texts_flow(ws, "nll")


FLOWS: tuple[Callable[[Workspace], Flow], ...] = (
    select_flow, length_target_flow, plan_flow, write_flow, postprocess_flow, general_flow, mix_flow,
    dpo_pairs_flow, grpo_flow, ruler_flow, longbench_answer_flow, longbench_flow, compare_flow, segments_flow, nll_flow,
)


def check(root: str | Path = ".") -> list[Flow]:
    """Every stage's flow in pipeline order."""
    ws = Workspace(root)
    flows = []
    for flow in FLOWS:
        stage = flow.__name__.removesuffix("_flow")
        try:
            flows.append(flow(ws))
        except FileNotFoundError as e:
            flows.append(Flow(stage, set(), set(), set(), missing=f"{e.filename or e} is missing"))
        except KeyError as e:
            flows.append(Flow(stage, set(), set(), set(), missing=f"dvc.yaml names no path {e}"))
    return flows


def render(flows: list[Flow]) -> str:
    bad = [f.stage for f in flows if not f.ok]
    head = ("every row accounted for: each input row is an output row or a failures row, never both, never neither"
            if not bad else f"rows not accounted for in {', '.join(bad)}")
    return "\n".join([head, *(f.line() for f in flows)]) + "\n"


if __name__ == "__main__":
    import click

    @click.command(help=__doc__)
    @click.option("--root", default=".", show_default=True, help="The run's workspace (dvc.yaml, params.yaml).")
    def main(root: str) -> None:
        flows = check(root)
        click.echo(render(flows), nl=False)
        if not all(f.ok for f in flows):
            raise SystemExit(1)

    main()
