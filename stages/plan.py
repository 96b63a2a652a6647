"""plan: AgentWrite step I, an outline per instruction (params: plan, llm).

Asks the generator for a list of paragraphs, each a main point and a word budget (through a JSON schema
where the backend takes one, else the paper's line format), repairs and rescales the budgets, re-asks a
bounded number of times on an unusable plan, and records the instructions it could not plan.
"""

import click

from longwriter.agentwrite.plan import PlanConfig, run_plan
from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--instructions", required=True, help="Input instructions.")
@click.option("--output", required=True, help="Plans table.")
@click.option("--failures", required=True, help="Failed plans.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, instructions: str, output: str, failures: str, metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(PlanConfig, section(params, "plan", params_file), f"{params_file}:plan")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_plan(instructions, output, failures, metrics, cfg, settings, timings=timings)
    click.echo(f"plan: {result['planned']}/{result['instructions']} planned, {result['paragraphs']['total']} "
               f"paragraphs, first-try rate {result['first_try_rate']:.0%}")


if __name__ == "__main__":
    main()
