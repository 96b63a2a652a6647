"""segments: how each long answer changes along its length (params: segments).

Cuts every AgentWrite answer and every evaluated model's LongBench-Write answer into equal parts by words and
measures each part: distinct n-grams, and the share of its n-grams that repeat earlier text. Writes the curve per
text set (plots/segments.csv, `dvc plots show`), the first-vs-last-part figures (metrics/segments.json) and the
measures of every part of every text (data/eval/segments.parquet); a text shorter than segments.min_words is a
failures row (too_short).
With segments.judge the judge (params: judge, llm) also rates each part given the text before it.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.segments import SegmentsConfig, run_segments
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--samples", required=True, help="AgentWrite answers.")
@click.option("--answers", required=True, help="Answers.")
@click.option("--output", required=True, help="Measures per text and part (SegmentParts).")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot", required=True, help="Curve per text set (plot data).")
@click.option("--failures", required=True,
              help="Texts shorter than segments.min_words; parts the judge could not rate (segments.judge).")
@stage_entry
def main(params_file: str, samples: str, answers: str, output: str, metrics: str, timings: str, plot: str,
         failures: str) -> None:
    params = read_params(params_file)
    cfg = build(SegmentsConfig, section(params, "segments", params_file), f"{params_file}:segments")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_segments(cfg, samples, answers, output, metrics, plot, failures, judge, settings,
                          timings=timings)
    for name, m in result["sets"].items():
        quality = (f"; judge quality {m['quality_first']} -> {m['quality_last']} over {m['judged_answers']} answers"
                   if cfg.judge else "")
        click.echo(f"segments {name}: {m['answers']} answers ({m['short']} shorter than {cfg.min_words} words); "
                   f"distinct-{cfg.n} drop {m['distinct_n_drop']}, repeats of earlier text rise "
                   f"{m['repeats_earlier_rise']} from the first to the last of {cfg.parts} parts{quality}")


if __name__ == "__main__":
    main()
