"""export: the long-output dataset as a Hugging Face dataset directory (params: export).

Writes Parquet shards and a README.md dataset card (counts, languages, length histogram, the models that
selected, planned and wrote the data, the recipe's params hash and the code revision); `datasets.load_dataset`
loads the directory. With --push-to, uploads an exported directory to the Hub instead (a token from HF_TOKEN or
`huggingface-cli login`):

\b
    python -m stages.export --output data/hf_dataset --push-to your-name/longwriter-data [--private]
"""

import click

from longwriter.agentwrite.export import ExportConfig, push_to_hub, run_export
from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--samples", default=None, help="Long samples (required unless --push-to).")
@click.option("--output", required=True, help="Dataset directory.")
@click.option("--metrics", default=None, help="Metrics JSON (required unless --push-to).")
@click.option("--timings", default=None,
              help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics (required unless "
                   "--push-to).")
@click.option("--push-to", "push_to", default=None, help="Upload --output to this Hub dataset id; no export.")
@click.option("--private", is_flag=True, help="With --push-to: make the Hub dataset private.")
@stage_entry
def main(params_file: str, samples: str | None, output: str, metrics: str | None, timings: str | None,
         push_to: str | None, private: bool) -> None:
    if push_to:
        click.echo(f"export: pushed {output} to {push_to_hub(output, push_to, private)}")
        return
    for option, value in (("--samples", samples), ("--metrics", metrics), ("--timings", timings)):
        if value is None:
            raise click.UsageError(f"Missing option '{option}' (needed unless --push-to).")
    assert samples is not None and metrics is not None and timings is not None
    params = read_params(params_file)
    cfg = build(ExportConfig, section(params, "export", params_file), f"{params_file}:export")
    # the sections whose values made the data: the card names their models and hashes them
    recipe = {"select": section(params, "select", params_file), "plan": section(params, "plan", params_file),
              "write": section(params, "write", params_file),
              "postprocess": section(params, "postprocess", params_file)}
    result = run_export(samples, recipe, params_file, output, metrics, cfg, timings=timings)
    click.echo(f"export: {result['examples']} examples in {result['shards']} shard(s) and a card in {output}")


if __name__ == "__main__":
    main()
