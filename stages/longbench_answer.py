"""longbench_answer: every model in eval.models answers the LongBench-Write requests (params: longbench.input,
longbench.en_file, eval, llm).

Reads any file in LongBench-Write's format (prompt, type, length). Judging is the next stage, so a new judge
never regenerates answers.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.answers import EvalConfig
from longwriter.eval.longbench import LongBenchConfig, run_longbench_answers
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--output", required=True, help="Answers table.")
@click.option("--failures", required=True,
              help="Failed answers.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--targets", default=None,
              help="Length targets table (length_target stage): requests that state no length. Default: none.")
@stage_entry
def main(params_file: str, output: str, failures: str, metrics: str, timings: str, targets: str | None) -> None:
    params = read_params(params_file)
    cfg = build(LongBenchConfig, section(params, "longbench", params_file), f"{params_file}:longbench")
    eval_cfg = build(EvalConfig, section(params, "eval", params_file), f"{params_file}:eval")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_longbench_answers(cfg, eval_cfg, settings, output, failures, metrics, timings=timings,
                                   targets=targets)
    for model in eval_cfg.models:
        m = result[model.name]
        click.echo(f"longbench_answer {model.name}: {m['answers']} answers, mean {m['mean_words']} words, "
                   f"{m['failed']} failed")
    asked = result["requests"]
    if asked["left_out_by_per_lang"]:
        click.echo(f"longbench_answer: {asked['asked']} of the file's {asked['in_file']} requests asked "
                   f"(longbench.per_lang)")
    if asked["no_length"] or asked["length_targets"]:
        click.echo(f"longbench_answer: {asked['length_targets']} requests that state no length asked with their "
                   f"length targets, {asked['no_length']} without one not asked (failures: no_required_length)")


if __name__ == "__main__":
    main()
