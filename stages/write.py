"""write: AgentWrite step II, one call per planned paragraph (params: write, llm).

mode sequential (the paper's): each paragraph sees the instruction, the plan and the paragraphs before it;
mode parallel: no history. Short paragraphs get bounded "continue" calls. Every call goes through the
shared response cache, so a rerun or a resume after a crash pays only for calls that never completed.

--estimate calls no model and writes no output: it prints what writing the plans would cost in both modes
(prompt, cached prompt and completion tokens; dollars from the generator's prices; method in
longwriter/agentwrite/estimate.py) and writes it as JSON to --estimate-json, or to stdout with the table on stderr.
"""

import json

import click

from longwriter.agentwrite import estimate as cost
from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.files import write_json
from longwriter.llm import ClientSettings


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--instructions", required=True, help="Input instructions.")
@click.option("--plans", required=True, help="Input plans.")
@click.option("--output", help="Written sections (needed unless --estimate).")
@click.option("--failures", help="Failed instructions (needed unless --estimate).")
@click.option("--metrics", help="Metrics JSON (needed unless --estimate).")
@click.option("--timings", help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics (needed unless "
              "--estimate).")
@click.option("--estimate", is_flag=True, help="Estimate what both modes cost; call no model, write no output.")
@click.option("--estimate-json", help="With --estimate: write the estimate here (default: stdout).")
@click.option("--estimate-tokens-per-word", type=click.FloatRange(min=0, min_open=True),
              default=cost.TOKENS_PER_WORD, show_default=True,
              help="With --estimate: tokens per word (CJK: per character) of prompts and paragraphs.")
@click.option("--estimate-cache-min", type=click.IntRange(min=0), default=cost.MIN_CACHED_TOKENS, show_default=True,
              help="With --estimate: the shortest prefix the backend caches, in tokens (OpenAI 1024, vLLM 16).")
@click.option("--estimate-cache-step", type=click.IntRange(min=1), default=cost.CACHED_STEP_TOKENS, show_default=True,
              help="With --estimate: cached tokens come in steps of this many (OpenAI 128, vLLM 16).")
@stage_entry
def main(params_file: str, instructions: str, plans: str, output: str | None, failures: str | None,
         metrics: str | None, timings: str | None, estimate: bool, estimate_json: str | None,
         estimate_tokens_per_word: float, estimate_cache_min: int, estimate_cache_step: int) -> None:
    params = read_params(params_file)
    cfg = build(WriteConfig, section(params, "write", params_file), f"{params_file}:write")
    if estimate:
        result = cost.estimate_files(instructions, plans, cfg, tokens_per_word=estimate_tokens_per_word,
                                     min_cached_tokens=estimate_cache_min, cached_step_tokens=estimate_cache_step)
        text = json.dumps(result, indent=1, ensure_ascii=False) + "\n"
        if estimate_json:
            write_json(result, estimate_json)
            click.echo(cost.summary(result))
        else:
            click.echo(cost.summary(result), err=True)
            click.echo(text, nl=False)
        return
    missing = [f"--{name}" for name, value in (("output", output), ("failures", failures), ("metrics", metrics),
                                               ("timings", timings)) if not value]
    if missing:
        raise click.UsageError(f"{', '.join(missing)} needed (all but --estimate write them)")
    settings = build(ClientSettings, section(params, "llm", params_file), f"{params_file}:llm")
    result = run_write(instructions, plans, output, failures, metrics, cfg, settings, timings=timings)
    click.echo(f"write: {result['sections']} sections, {result['words']} words "
               f"({result['written_to_planned']:.0%} of planned), {result['failed']} instructions failed")


if __name__ == "__main__":
    main()
