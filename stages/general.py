"""general: a small general chat set for mix: everyday prompts answered by the generator (params: general,
llm). Point mix.general at a real general SFT set (Parquet/JSONL with `messages`) instead, for a real run.
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.llm import ClientSettings
from longwriter.train.general import GeneralConfig, run_general


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--output", required=True, help="Chat table.")
@click.option("--failures", required=True, help="Failed prompts.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, output: str, failures: str, metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(GeneralConfig, section(params, "general", params_file), f"{params_file}:general")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_general(cfg, settings, output, failures, metrics, timings=timings)
    click.echo(f"general: {result['examples']} of {result['prompts']} prompts answered")


if __name__ == "__main__":
    main()
