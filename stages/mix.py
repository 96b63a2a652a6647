"""mix: long-output samples + general chat at a ratio, shuffled with a seed and split into train/validation
(params: mix). Writes a chat-format dataset (Parquet, `messages` column) that `datasets` loads; samples whose
answer has more words than mix.max_output_words go to the failures table.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.train.mix import MixConfig, run_mix
from longwriter.train.trainer import base_trust_remote_code


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--tokenizer", required=True, help="Checkpoint whose tokenizer counts tokens.")
@click.option("--output", required=True, help="Output directory (train/validation.parquet).")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--failures", required=True, help="Failures table (samples over mix.max_output_words).")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, tokenizer: str, output: str, metrics: str, failures: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(MixConfig, section(params, "mix", params_file), f"{params_file}:mix")
    # the base model's tokenizer: custom-code ones (GLM-4) load with base.trust_remote_code
    trust = base_trust_remote_code(section(params, "base", params_file), f"{params_file}:base")
    result = run_mix(cfg, tokenizer, output, metrics, failures, timings=timings, trust_remote_code=trust)
    left_out = result["left_out"]
    if any(left_out.values()):
        click.echo(f"mix: left out over max_output_words {cfg.max_output_words}: long {left_out['long']}, "
                   f"general {left_out['general']}")
    for split in ("train", "validation"):
        parts = ", ".join(f"{s} {v['examples']} ({v['tokens']:,} tokens)" for s, v in result[split].items())
        click.echo(f"mix {split}: {parts}")


if __name__ == "__main__":
    main()
