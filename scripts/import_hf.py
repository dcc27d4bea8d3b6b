"""
Import a Hugging Face transformers NanoChat directory (as written by scripts.export_hf) back into
our checkpoint layout: <base>/<stage>_checkpoints/<tag>/model_XXXXXX.pt + meta_XXXXXX.json, and the
tokenizer into <base>/tokenizer/ when the base dir has none.

    python -m scripts.import_hf hf/nanochat-d20
    python -m scripts.import_hf hf/nanochat-d20 --source=sft --model_tag=d20 --step=0

Source, tag and step default to what the export recorded (else base, d<n_layer>, 0).
"""

import argparse
import sys

from nanochat.checkpoint_manager import SOURCE_DIRS
from nanochat.hf_export import import_hf_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="Import a Hugging Face NanoChat directory as a nanochat checkpoint")
    parser.add_argument("hf_dir", help="directory with config.json, model.safetensors and tokenizer.json")
    parser.add_argument("--source", choices=list(SOURCE_DIRS), default=None, help="stage to file the checkpoint under")
    parser.add_argument("--model_tag", default=None, help="checkpoint tag (default: recorded tag or d<n_layer>)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: recorded step or 0)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing checkpoint at that tag/step")
    args = parser.parse_args(argv)
    try:
        checkpoint_dir, step = import_hf_dir(args.hf_dir, source=args.source, model_tag=args.model_tag,
                                             step=args.step, force=args.force)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # HFExportError, TokenizerError
        print(f"import_hf: {e}", file=sys.stderr)
        return 1
    print(f"Imported {args.hf_dir} as {checkpoint_dir} step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
