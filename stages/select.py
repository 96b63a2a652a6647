"""select: pick long-writing instructions from the instruction pools (params: select, llm).

Reads the pools named in params (JSONL or Parquet), normalises and deduplicates them, detects zh/en,
filters by length, then asks the selector model which prompts need a long answer, until each language has
its quota. Writes the chosen instructions, the calls that failed, and step-by-step counts.
"""

import click

from longwriter.agentwrite.select import SelectConfig, run_select
from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--output", required=True, help="Chosen instructions.")
@click.option("--failures", required=True, help="Failed calls.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, output: str, failures: str, metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(SelectConfig, section(params, "select", params_file), f"{params_file}:select")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_select(output, failures, metrics, cfg, settings, timings=timings)
    click.echo(f"select: {result['selected']} instructions chosen from {result['read']} "
               f"({result['judged']} judged, cache hits {result['llm']['cache_hits']}/{result['llm']['calls']})")


if __name__ == "__main__":
    main()
