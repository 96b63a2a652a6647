"""segments: how each long answer changes along its length (params: segments).

Cuts every AgentWrite answer and every evaluated model's LongBench-Write answer into equal parts by words and
measures each part: distinct n-grams, and the share of its n-grams that repeat earlier text. Writes the curve per
text set (plots/segments.csv, `dvc plots show`) and the first-vs-last-part figures (metrics/segments.json).
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.segments import SegmentsConfig, run_segments


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--samples", default="data/long_samples.parquet", show_default=True, help="AgentWrite answers.")
@click.option("--answers", default="data/eval/longbench_answers.parquet", show_default=True, help="Answers.")
@click.option("--metrics", default="metrics/segments.json", show_default=True, help="Metrics JSON.")
@click.option("--plot", default="plots/segments.csv", show_default=True, help="Curve per text set (plot data).")
@stage_entry
def main(params_file: str, samples: str, answers: str, metrics: str, plot: str) -> None:
    params = read_params(params_file)
    cfg = build(SegmentsConfig, section(params, "segments", params_file), f"{params_file}:segments")
    result = run_segments(cfg, samples, answers, metrics, plot)
    for name, m in result["sets"].items():
        click.echo(f"segments {name}: {m['answers']} answers ({m['short']} shorter than {cfg.min_words} words); "
                   f"distinct-{cfg.n} drop {m['distinct_n_drop']}, repeats of earlier text rise "
                   f"{m['repeats_earlier_rise']} from the first to the last of {cfg.parts} parts")


if __name__ == "__main__":
    main()
