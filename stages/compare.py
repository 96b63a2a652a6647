"""compare: the judge compares two models' LongBench-Write answers to the same request, in both orders,
and reports win/tie/loss rates per pair (params: compare, judge, llm). With no pairs it writes empty outputs.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.compare import CompareConfig, run_compare
from longwriter.eval.judge import JudgeConfig
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--answers", default="data/eval/longbench_answers.parquet", show_default=True, help="Answers.")
@click.option("--output", default="data/eval/compare.parquet", show_default=True, help="Verdicts table.")
@click.option("--failures", default="data/failures/compare.parquet", show_default=True, help="Judge failures.")
@click.option("--metrics", default="metrics/compare.json", show_default=True, help="Metrics JSON.")
@stage_entry
def main(params_file: str, answers: str, output: str, failures: str, metrics: str) -> None:
    params = read_params(params_file)
    cfg = build(CompareConfig, section(params, "compare", params_file), f"{params_file}:compare")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_compare(cfg, judge, settings, answers, output, failures, metrics)
    for a, b in cfg.pairs:
        name, m = f"{a}_vs_{b}", result[f"{a}_vs_{b}"]
        click.echo(f"compare {name}: win {m['win_rate']}, tie {m['tie_rate']}, loss {m['loss_rate']} "
                   f"over {m['judged']} requests, {m['failed']} failed, {m['unanswered']} unanswered")
    if not cfg.pairs:
        click.echo("compare: no pairs in params (compare.pairs); nothing to judge")


if __name__ == "__main__":
    main()
