"""compare: the judge compares two models' LongBench-Write answers to the same request, in both orders, and reports
win/tie/loss rates per pair, and an Elo rating per model from all the pairs' verdicts (params: compare, judge, llm).
compare.reference pairs every other model with that one (e.g. reference answers, provider answers) and anchors the
Elo scale on it at 1000. With no pairs it writes empty outputs. Every (pair, request asked) ends as one row: a
`left_out` failures row when compare.requests samples it out, a verdicts row when both models answered it, else an
`unanswered` failures row (one or both did not answer); --answer-failures (the answering stage's failures) names the
requests no model answered, which are among them too.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.compare import CompareConfig, run_compare
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--answers", required=True, help="Answers.")
@click.option("--output", required=True, help="Verdicts table.")
@click.option("--failures", required=True, help="Judge failures.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--elo-plot", required=True, help="Elo per model (plot data).")
@click.option("--answer-failures", required=True,
              help="The answering stage's failures (model/index ids): requests no model answered get rows too.")
@stage_entry
def main(params_file: str, answers: str, output: str, failures: str, metrics: str, timings: str, elo_plot: str,
         answer_failures: str) -> None:
    params = read_params(params_file)
    cfg = build(CompareConfig, section(params, "compare", params_file), f"{params_file}:compare")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_compare(cfg, judge, settings, answers, output, failures, metrics, elo_plot, timings=timings,
                         answer_failures=answer_failures)
    for a, b in result["pairs"]:
        name, m = f"{a}_vs_{b}", result[f"{a}_vs_{b}"]
        click.echo(f"compare {name}: win {m['win_rate']}, tie {m['tie_rate']}, loss {m['loss_rate']} "
                   f"over {m['judged']} requests, {m['failed']} failed, {m['unanswered']} unanswered")
    for model, r in result["elo"]["ratings"].items():
        click.echo(f"compare Elo {model}: {r['elo']} [{r['ci_low']}, {r['ci_high']}] over {r['games']} games")
    if not result["pairs"]:
        click.echo("compare: no pairs in params (compare.pairs, compare.reference); nothing to judge")


if __name__ == "__main__":
    main()
