"""sft: supervised fine-tuning of the base checkpoint on the mix with TRL's SFTTrainer (params: sft).

Single process by default; for several GPUs run it under accelerate (params: train.launch, e.g.
`accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml`).
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.train.sft import SFTSettings, run_sft
from longwriter.train.trainer import base_trust_remote_code


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--base", required=True, help="Checkpoint to start from.")
@click.option("--data", required=True, help="Mix directory (train/validation.parquet).")
@click.option("--output", required=True, help="Trained checkpoint directory.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@click.option("--plot-csv", required=True, help="Loss curve for DVC plots.")
@click.option("--failures", required=True,
              help="Examples over max_length (dropped or truncated).")
@stage_entry
def main(params_file: str, base: str, data: str, output: str, metrics: str, timings: str, plot_csv: str,
         failures: str) -> None:
    params = read_params(params_file)
    cfg = build(SFTSettings, section(params, "sft", params_file), f"{params_file}:sft")
    # the training loaders honour the base model's trust_remote_code (custom-code models such as GLM-4)
    trust = base_trust_remote_code(section(params, "base", params_file), f"{params_file}:base")
    r = run_sft(cfg, base, data, output, metrics, plot_csv, failures, timings=timings,
                trust_remote_code=trust)
    click.echo(f"sft: {r['steps']} steps, train loss {r['train_loss_first']} -> {r['train_loss_last']}, "
               f"validation loss {r['validation_loss_first']} -> {r['validation_loss_last']}, "
               f"{r['tokens_per_s']} tokens/s")


if __name__ == "__main__":
    main()
