"""longbench: LongBench-Write scores of every request: length score S_l (0 for a request left unanswered), the
judge's six quality ratings (S_q), S = (S_l + S_q) / 2, overall, per length bucket and per language (params:
longbench.input, longbench.en_file, judge, llm).

Writes the per-answer scores table, per-model metrics and the produced-vs-required scatter (CSV + PNG).
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.longbench import LongBenchConfig, run_longbench
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--answers", required=True, help="Answers.")
@click.option("--answer-failures", required=True,
              help="Requests left unanswered (scored 0).")
@click.option("--output", required=True, help="Scores table.")
@click.option("--failures", required=True, help="Judge failures.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot-csv", required=True, help="Scatter data for DVC plots.")
@click.option("--plot-png", required=True, help="Scatter as PNG.")
@click.option("--targets", default=None,
              help="Length targets table (length_target stage): requests that state no length. Default: none.")
@stage_entry
def main(params_file: str, answers: str, answer_failures: str, output: str, failures: str, metrics: str, timings: str,
         plot_csv: str, plot_png: str, targets: str | None) -> None:
    params = read_params(params_file)
    cfg = build(LongBenchConfig, section(params, "longbench", params_file), f"{params_file}:longbench")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_longbench(judge, settings, cfg.input, answers, answer_failures, output, failures, metrics,
                           plot_csv, plot_png, en_file=cfg.en_file, timings=timings, targets=targets)
    for name, m in result.items():
        if isinstance(m, dict) and "S" in m:
            click.echo(f"longbench {name}: S {m.get('S')} (S_l {m.get('S_l')}, S_q {m.get('S_q')}), "
                       f"{m.get('judge_failed', 0)} judge failures, {m['unanswered']} unanswered")
    if result["length_targets"]:
        click.echo(f"longbench: {result['length_targets']} requests that state no length scored against their "
                   "length targets")


if __name__ == "__main__":
    main()
