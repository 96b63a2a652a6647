"""agreement: how far a second judge agrees with the configured one (params: agreement, judge, llm).

The reference judge (agreement.reference) rates a seeded sample of the LongBench-Write answers the judge rated;
per dimension Spearman, Kendall's tau-b, exact and within-one agreement, and the S_q difference with a bootstrap
interval (metrics/agreement.json, plots/agreement.csv). Warns when a dimension's Spearman is below
agreement.min_spearman. On the defaults the reference is the embedded judge asked again at temperature 1.0: the
figures are then its agreement with itself.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.agreement import AgreementConfig, run_agreement
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--scores", required=True,
              help="The judge's ratings (longbench).")
@click.option("--answers", required=True, help="Answers.")
@click.option("--output", required=True,
              help="Both judges' ratings of the sample.")
@click.option("--failures", required=True,
              help="Answers the reference judge could not rate.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot", required=True, help="Per-dimension agreement (plot).")
@stage_entry
def main(params_file: str, scores: str, answers: str, output: str, failures: str, metrics: str, timings: str,
         plot: str) -> None:
    params = read_params(params_file)
    cfg = build(AgreementConfig, section(params, "agreement", params_file), f"{params_file}:agreement")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_agreement(cfg, judge, settings, scores, answers, output, failures, metrics, plot, timings=timings)
    s_q = result["S_q"]
    click.echo(f"agreement with {result['reference']}: {result['rated_by_both']} answers rated by both "
               f"({result['reference_failed']} reference failures); mean Spearman {result['mean_spearman']}; "
               f"S_q {s_q['judge']} vs {s_q['reference']}, difference {s_q['reference_minus_judge']} "
               f"({s_q['level']:.0%} interval {s_q['interval']})")
    if result["warning"]:
        click.echo(f"warning: {result['warning']}", err=True)


if __name__ == "__main__":
    main()
