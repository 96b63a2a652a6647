"""length_target: the judge's word range for every prompt that states no length (params: length_target, judge,
llm, grpo.pool, longbench.input).

Looks at the selected instructions, grpo.pool and longbench.input, asks the judge for [min_words, max_words] for
each prompt with no stated length, and writes one table that dpo_pairs, grpo, longbench_answer and longbench read
(--targets). Also measures the predictor where the answer is known: the first length_target.agreement requests of
longbench.input that state a length, asked with the statement removed. length_target.enabled false (the laptop
default) writes an empty table and starts no model.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.eval.longbench import LongBenchConfig
from longwriter.judge import JudgeConfig
from longwriter.length_target import LengthTargetConfig, run_length_target
from longwriter.llm import ClientSettings
from longwriter.train.grpo import GRPOSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--instructions", required=True, help="Selected instructions (select's table).")
@click.option("--output", required=True, help="Length targets table.")
@click.option("--failures", required=True, help="Failures table (prompts the judge gave no usable range for).")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, instructions: str, output: str, failures: str, metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(LengthTargetConfig, section(params, "length_target", params_file), f"{params_file}:length_target")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    pool = build(GRPOSettings, section(params, "grpo", params_file), f"{params_file}:grpo").pool
    bench = build(LongBenchConfig, section(params, "longbench", params_file), f"{params_file}:longbench").input
    result = run_length_target(cfg, judge, settings, instructions, pool, bench, output, failures, metrics, timings)
    if not result["enabled"]:
        click.echo("length_target: off (length_target.enabled: false); empty table written")
        return
    t, a = result["targets"], result["agreement"]
    click.echo(f"length_target: {t['predicted']} of {t['needed']} prompts that state no length got a range "
               f"(by source {t['by_source']}, median width {t['median_width_words']} words)")
    click.echo(f"length_target agreement on {a['predicted']} of {a['asked']} prompts with their stated length "
               f"hidden: {a['in_range_share']} inside the range, S_l of the stated length {a['S_l_of_stated']}, "
               f"midpoint/stated median {a['midpoint_to_stated_median']}, Spearman {a['spearman']}")


if __name__ == "__main__":
    main()
