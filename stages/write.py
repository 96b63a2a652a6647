"""write: AgentWrite step II, one call per planned paragraph (params: write, llm).

mode sequential (the paper's): each paragraph sees the instruction, the plan and the paragraphs before it;
mode parallel: no history. Short paragraphs get bounded "continue" calls. Every call goes through the
shared response cache, so a rerun or a resume after a crash pays only for calls that never completed.
"""

import click

from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--instructions", required=True, help="Input instructions.")
@click.option("--plans", required=True, help="Input plans.")
@click.option("--output", required=True, help="Written sections.")
@click.option("--failures", required=True, help="Failed instructions.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, instructions: str, plans: str, output: str, failures: str, metrics: str,
         timings: str) -> None:
    params = read_params(params_file)
    cfg = build(WriteConfig, section(params, "write", params_file), f"{params_file}:write")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_write(instructions, plans, output, failures, metrics, cfg, settings, timings=timings)
    click.echo(f"write: {result['sections']} sections, {result['words']} words "
               f"({result['written_to_planned']:.0%} of planned), {result['failed']} instructions failed")


if __name__ == "__main__":
    main()
