"""dpo: direct preference optimisation of the SFT model on the pairs with TRL's DPOTrainer (params: dpo)."""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.train.dpo import DPOSettings, run_dpo
from longwriter.train.trainer import base_trust_remote_code


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--model", required=True, help="Checkpoint to start from.")
@click.option("--pairs", required=True, help="Preference pairs.")
@click.option("--output", required=True, help="Trained checkpoint directory.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot-csv", required=True, help="Loss curve for DVC plots.")
@click.option("--failures", required=True,
              help="Examples over max_length (dropped or truncated).")
@stage_entry
def main(params_file: str, model: str, pairs: str, output: str, metrics: str, timings: str, plot_csv: str,
         failures: str) -> None:
    params = read_params(params_file)
    cfg = build(DPOSettings, section(params, "dpo", params_file), f"{params_file}:dpo")
    # the training loaders honour the base model's trust_remote_code (custom-code models such as GLM-4)
    trust = base_trust_remote_code(section(params, "base", params_file), f"{params_file}:base")
    r = run_dpo(cfg, model, pairs, output, metrics, plot_csv, failures, timings=timings,
                trust_remote_code=trust)
    click.echo(f"dpo: {r['pairs']} pairs, {r['steps']} steps, loss {r.get('loss_first')} -> {r.get('loss_last')}, "
               f"reward accuracy {r.get('reward_accuracy_last')}")


if __name__ == "__main__":
    main()
