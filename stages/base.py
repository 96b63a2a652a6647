"""base: the model to train as a safetensors checkpoint (params: base).

Default: the embedded SmolLM2-135M-Instruct GGUF, de-quantized to fp32 once (a GGUF-loaded model cannot be
trained). Or a Hugging Face model id / local directory (e.g. THUDM/glm-4-9b, meta-llama/Llama-3.1-8B).
"""

import click

from longwriter.config import build, read_params, section
from longwriter.errors import stage_entry
from longwriter.train.base_model import BaseModelConfig, run_base


@click.command(help=__doc__)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Params file.")
@click.option("--output", required=True, help="Checkpoint directory.")
@click.option("--metrics", required=True, help="Metrics JSON.")
@click.option("--timings", required=True, help="Timing figures JSON (seconds, tokens/s): kept apart from the metrics.")
@stage_entry
def main(params_file: str, output: str, metrics: str, timings: str) -> None:
    params = read_params(params_file)
    cfg = build(BaseModelConfig, section(params, "base", params_file), f"{params_file}:base")
    result = run_base(cfg, output, metrics, timings=timings)
    click.echo(f"base: {result['source']} -> {output} ({result['parameters']:,} parameters, {result['size_mb']} MB)")


if __name__ == "__main__":
    main()
