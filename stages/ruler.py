"""ruler: LongWrite-Ruler, how long can each model write when asked for L words? (params: ruler, eval, llm)

Every model in eval.models answers every request of the ruler file whose length is in ruler.lengths, each with
max_tokens capped per request (eval.cap_ratio, eval.tokens_per_word; eval.sampling.max_tokens is the ceiling).
Writes the answers table, per-model metrics (mean words per length and max output length, on the words produced
and on the words before a loop; degenerate and truncated shares; answers capped below lossless / below the ask)
and the required-vs-produced curve as CSV (for `dvc plots show`) and PNG.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.answers import EvalConfig
from longwriter.eval.ruler import RulerConfig, run_ruler
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--output", required=True, help="Answers table.")
@click.option("--failures", required=True, help="Failed answers.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot-csv", required=True, help="Curve data for DVC plots.")
@click.option("--plot-png", required=True, help="Curve as PNG.")
@stage_entry
def main(params_file: str, output: str, failures: str, metrics: str, timings: str, plot_csv: str,
         plot_png: str) -> None:
    params = read_params(params_file)
    cfg = build(RulerConfig, section(params, "ruler", params_file), f"{params_file}:ruler")
    eval_cfg = build(EvalConfig, section(params, "eval", params_file), f"{params_file}:eval")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_ruler(cfg, eval_cfg, settings, output, failures, metrics, plot_csv, plot_png, timings=timings)
    for model in eval_cfg.models:
        m = result[model.name]
        click.echo(f"ruler {model.name}: max output length {m['max_output_length']} words "
                   f"({m.get('max_output_length_effective', 0)} before loops), mean words per length "
                   f"{m.get('mean_words', {})}, {m['failed']} failed")


if __name__ == "__main__":
    main()
