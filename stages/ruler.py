"""ruler: LongWrite-Ruler, how long can each model write when asked for L words? (params: ruler, eval, llm)

Every model in eval.models answers the first ruler.per_length requests of each length in ruler.lengths, each
with max_tokens capped so as not to change the ruler's decision (ratio reach x answers per length, eval's
tokens_per_word and cap_margin; ruler.max_tokens is the ceiling). Writes the answers table, per-model metrics
(mean words per length and max output length, on the words produced and on the words before a loop, each
flagged censored when it is only a lower bound; degenerate and truncated shares; answers capped below the
decision-lossless cap) and the required-vs-produced curve as CSV (for `dvc plots show`) and PNG. A failed request
(no answer) counts 0 words in the means, the curve and the max output length, as LongBench-Write counts it;
the answered-only figures are beside them (*_answered). Warns when a request's limit (the ceiling or the
context) was below its decision-lossless cap.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.answers import EvalConfig
from longwriter.eval.ruler import RulerConfig, run_ruler, shown_max
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
        click.echo(f"ruler {model.name}: max output length {shown_max(m)} words "
                   f"({shown_max(m, effective=True)} before loops), mean words per length "
                   f"{m.get('mean_words', {})}, {m['failed']} failed"
                   + (f" (counted as 0 words; answered only: max output length {shown_max(m, answered=True)}, "
                      f"mean words per length {m.get('mean_words_answered', {})})" if m["failed"] else ""))
        if m.get("capped_below_decision"):
            uncertain = m.get("decision_uncertain") or []
            click.echo(f"warning: ruler {model.name}: {m['capped_below_decision']} of {m['answers']} answers had a "
                       "token limit (ruler.max_tokens or the backend's context) below their decision-lossless cap"
                       + (f"; lengths {uncertain} were missed with such an answer cut at its limit, so the max "
                          "output length is a lower bound" if uncertain else "; none of them changed a decision"),
                       err=True)


if __name__ == "__main__":
    main()
