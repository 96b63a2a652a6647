"""postprocess: AgentWrite answers to chat-format long-output samples (params: postprocess).

Joins each instruction's paragraphs, strips "Paragraph N"-style labels, drops answers that are too short,
come from collapsed plans or degenerate into repetition, and writes user/assistant samples.
"""

import click

from longwriter.agentwrite.postprocess import PostprocessConfig, run_postprocess
from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--instructions", required=True, help="Input instructions.")
@click.option("--plans", required=True, help="Input plans.")
@click.option("--sections", required=True, help="Input sections.")
@click.option("--output", required=True, help="Long samples.")
@click.option("--failures", required=True, help="Dropped.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, instructions: str, plans: str, sections: str, output: str, failures: str,
         metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(PostprocessConfig, section(params, "postprocess", params_file), f"{params_file}:postprocess")
    result = run_postprocess(instructions, plans, sections, output, failures, metrics, cfg, timings=timings)
    click.echo(f"postprocess: kept {result['kept']} of {result['written']} answers, dropped {result['dropped']}")


if __name__ == "__main__":
    main()
