"""grpo: reinforcement learning for long writing with TRL's GRPOTrainer (params: grpo, judge, llm).

The policy starts from models/<grpo.start> and is rewarded for the length it is asked for (LongBench-Write's S_l of
its effective words), the judge's quality rating, no repetition, and staying under the completion cap. Prompts: the
selected instructions with their required lengths, plus grpo.pool; a prompt that states no length is rewarded
against its length target (--targets, the length_target stage). Writes models/grpo, the reward curves
(plots/grpo_rewards.csv) and metrics/grpo.json. The default is a CPU smoke run: its figures are not a result about
long writing.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings
from longwriter.train.grpo import GRPOSettings, run_grpo
from longwriter.train.trainer import base_trust_remote_code


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--model", default=None, help="Checkpoint to start from (default: models/<grpo.start>).")
@click.option("--instructions", required=True, help="Selected instructions.")
@click.option("--plans", required=True, help="Their plans (required lengths).")
@click.option("--output", required=True, help="Trained checkpoint directory.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot-csv", required=True, help="Reward curves (DVC plots).")
@click.option("--failures", required=True,
              help="Prompts left out and completions the judge could not rate.")
@click.option("--prompts-output", required=True, help="The prompts trained on, with their required lengths.")
@click.option("--targets", default=None,
              help="Length targets table (length_target stage): prompts that state no length. Default: none.")
@stage_entry
def main(params_file: str, model: str | None, instructions: str, plans: str, output: str, metrics: str, timings: str,
         plot_csv: str, failures: str, prompts_output: str, targets: str | None) -> None:
    params = read_params(params_file)
    cfg = build(GRPOSettings, section(params, "grpo", params_file), f"{params_file}:grpo")
    judge = build(JudgeConfig, section(params, "judge", params_file), f"{params_file}:judge")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    # the training loaders honour the base model's trust_remote_code (custom-code models such as GLM-4)
    trust = base_trust_remote_code(section(params, "base", params_file), f"{params_file}:base")
    r = run_grpo(cfg, judge, settings, model or f"models/{cfg.start}", instructions, plans, output, metrics,
                 plot_csv, failures, timings=timings, trust_remote_code=trust, prompts_output=prompts_output,
                 targets=targets)
    first, last = r["first"], r["last"]
    click.echo(f"grpo: {r['prompts']} prompts ({sum(r['left_out'].values())} left out), {r['steps']} steps; reward "
               f"{first.get('reward')} -> {last.get('reward')} (length {first.get('length')} -> {last.get('length')}, "
               f"quality {first.get('quality')} -> {last.get('quality')}); {r['judge_failed']} judge failures, "
               f"{r['masked_completions']} completions masked")


if __name__ == "__main__":
    main()
