"""criteria: every model of eval.models answers the requests of a criteria file (WritingBench's format: each
request with its own named criteria), and the judge scores each answer against each of its request's criteria,
1-10 with a reason (params: criteria, eval, judge, llm). Writes the answers, the scores, the failures (every
(model, request) unanswered and every (answer, criterion) the judge could not score) and the metrics: per model
the mean score and the means per domain and per criterion. criteria.enabled false (the laptop default) writes
empty tables.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.answers import EvalConfig
from longwriter.eval.criteria import CriteriaConfig, run_criteria
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--answers", required=True, help="Answers table.")
@click.option("--output", required=True, help="Scores table (one row per answer and criterion).")
@click.option("--failures", required=True, help="Failures table.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, answers: str, output: str, failures: str, metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(CriteriaConfig, section(params, "criteria", params_file), f"{params_file}:criteria")
    eval_cfg = build(EvalConfig, section(params, "eval", params_file), f"{params_file}:eval")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_criteria(cfg, eval_cfg, judge, settings, answers, output, failures, metrics, timings=timings)
    if not result["enabled"]:
        click.echo("criteria: off (criteria.enabled: false); empty outputs written")
        return
    for model in eval_cfg.models:
        m = result[model.name]
        click.echo(f"criteria {model.name}: mean score {m['mean_score']} (1-10) over {m['judged']} of "
                   f"{m['criteria']} criteria, {m['answers']} of {m['requests']} requests answered; "
                   f"by domain {m['by_domain']}")


if __name__ == "__main__":
    main()
