"""nll: cumulative average NLL by token position of the long texts, scored by a reference LM (params: nll).

For the AgentWrite answers and each evaluated model's LongBench-Write answers longer than nll.min_tokens, and
for the same texts with their paragraphs shuffled: the curve per text set (plots/nll.csv), the mean NLL at fixed
positions and the slope of the curve's tail (metrics/nll.json). A curve that keeps falling where the shuffled
one does not is later text depending on earlier text. Each scored text's mean NLL, as written and shuffled, is a row
of data/eval/nll.parquet; a text too short or past nll.max_texts is a failures row (too_short, left_out).
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.nll import NllConfig, run_nll


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--samples", required=True, help="AgentWrite answers.")
@click.option("--answers", required=True, help="Answers.")
@click.option("--output", required=True, help="Mean NLL per scored text (NllTexts).")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot", required=True, help="Curves per text set (plot data).")
@click.option("--failures", required=True, help="Texts too short or past nll.max_texts.")
@stage_entry
def main(params_file: str, samples: str, answers: str, output: str, metrics: str, timings: str, plot: str,
         failures: str) -> None:
    params = read_params(params_file)
    cfg = build(NllConfig, section(params, "nll", params_file), f"{params_file}:nll")
    result = run_nll(cfg, samples, answers, output, metrics, plot, failures, timings=timings)
    for name, m in result["sets"].items():
        click.echo(f"nll {name}: {m['texts']} texts ({m['short']} shorter than {cfg.min_tokens} tokens); tail "
                   f"slope {m['original']['tail_slope_per_1k']} nats/1k tokens, shuffled "
                   f"{m['shuffled']['tail_slope_per_1k']}")


if __name__ == "__main__":
    main()
