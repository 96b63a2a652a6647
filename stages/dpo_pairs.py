"""dpo_pairs: preference pairs from the SFT model (params: dpo_pairs, judge, llm).

For each selected long-writing instruction: sample answers from models/sft, score each with the judge
(S = (S_l + S_q) / 2), take the best as chosen and a random other as rejected (dpo_pairs.rejected:
random_other, the paper's, any other answer, a draw that ties the best giving no pair; random_lower, only
answers scoring lower). An instruction with neither a required nor an estimated length is not sampled.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings
from longwriter.train.pairs import PairsConfig, run_dpo_pairs


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--instructions", required=True, help="Long-writing prompts.")
@click.option("--model", required=True, help="Checkpoint that samples the answers.")
@click.option("--output", required=True, help="Pairs table.")
@click.option("--failures", required=True, help="Failures.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--targets", default=None,
              help="Length targets table (length_target stage): instructions that state no length. Default: none.")
@stage_entry
def main(params_file: str, instructions: str, model: str, output: str, failures: str, metrics: str,
         timings: str, targets: str | None) -> None:
    params = read_params(params_file)
    cfg = build(PairsConfig, section(params, "dpo_pairs", params_file), f"{params_file}:dpo_pairs")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    r = run_dpo_pairs(cfg, judge, settings, instructions, model, output, failures, metrics, timings=timings,
                      targets=targets)
    sampled = r["prompts"] - r["over_ceiling"] - r["no_required_length"]
    click.echo(f"dpo_pairs: {r['pairs']} pairs from {r['samples']} samples of {sampled} prompts "
               f"({r['over_ceiling']} asking more words than the ceiling holds tokens and {r['no_required_length']} "
               f"with no required length, length target or estimate, not sampled; {r['length_targets']} scored "
               f"against a length target; rejected: {cfg.rejected}), "
               f"mean margin {r['margin_mean']}")


if __name__ == "__main__":
    main()
