"""
Export one of our checkpoints as a Hugging Face transformers NanoChat model directory
(config.json, model.safetensors, generation_config.json, tokenizer.json with a chat template).

    python -m scripts.export_hf --source=sft --out=hf/nanochat-d20
    python -m scripts.export_hf --source=base --model_tag=d20 --step=21400 --out=hf/base --dtype=bfloat16

The result loads with AutoModelForCausalLM.from_pretrained(DIR) / AutoTokenizer.from_pretrained(DIR).
See docs/huggingface.md.
"""

import argparse
import sys

from nanochat.checkpoint_manager import SOURCE_DIRS
from nanochat.hf_export import DTYPES, export_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a nanochat checkpoint to Hugging Face transformers format")
    parser.add_argument("--source", choices=list(SOURCE_DIRS), required=True, help="which stage's checkpoint")
    parser.add_argument("--model_tag", default=None, help="checkpoint tag, e.g. d20 (default: the largest)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, help="output directory (must be empty unless --force)")
    parser.add_argument("--force", action="store_true", help="overwrite files in a non-empty --out")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the saved weights")
    args = parser.parse_args(argv)
    try:
        checkpoint_dir, step = export_checkpoint(args.source, args.out, model_tag=args.model_tag, step=args.step,
                                                 dtype=args.dtype, force=args.force)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # HFExportError, TokenizerError
        print(f"export_hf: {e}", file=sys.stderr)
        return 1
    print(f"Exported {checkpoint_dir} step {step} ({args.dtype}) to {args.out}")
    print(f"Load it with: AutoModelForCausalLM.from_pretrained({args.out!r}); "
          f"AutoTokenizer.from_pretrained({args.out!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
