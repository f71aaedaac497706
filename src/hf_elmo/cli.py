"""The `hf-elmo` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .original_checkpoint import CheckpointError


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hf-elmo convert` and of conversion/convert_elmo_original_to_hf.py."""
    from .conversion import MODEL_CARDS

    parser.add_argument("--options-file", required=True, help="options.json of the original model (path or URL)")
    parser.add_argument("--weight-file", required=True, help="weights .hdf5 of the original model (path or URL)")
    parser.add_argument("--output-dir", required=True, type=Path, help="checkpoint folder to write (replaced at the end)")
    parser.add_argument("--vocab-file", help="words whose token vectors are cached in the checkpoint (one a line)")
    parser.add_argument("--model-card", default="auto", choices=["auto", "generic", *MODEL_CARDS],
                        help="README.md to write: detected from the shapes by default")
    parser.add_argument("--cache-dir", type=Path, help="where URL downloads are cached (default ~/.cache/hf_elmo)")


def run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_original_checkpoint

    card = None if args.model_card == "generic" else args.model_card
    out = convert_original_checkpoint(
        args.options_file, args.weight_file, args.output_dir, vocab_file=args.vocab_file, model_card=card,
        cache_dir=args.cache_dir,
    )
    print(f"wrote {out}")


def run_dump_token_embeddings(args: argparse.Namespace) -> None:
    import torch

    from .conversion import dump_token_embeddings, read_vocab_file
    from .modeling_elmo import ElmoModel

    words = read_vocab_file(args.vocab_file, unique=False)
    model = ElmoModel.from_pretrained(args.model).to(args.device).eval()
    with torch.inference_mode():
        out = dump_token_embeddings(model, words, args.output_file, batch_size=args.batch_size)
    print(f"wrote {len(words)} token vectors to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-elmo", description="ELMo as a Hugging Face transformers model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert an original options.json + weights.hdf5 to a checkpoint folder")
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)

    dump = commands.add_parser(
        "dump-token-embeddings", help="write context-free token vectors of a vocabulary (bilm-tf's dump_token_embeddings)"
    )
    dump.add_argument("model", help="checkpoint folder or Hub repo id")
    dump.add_argument("vocab_file", help="one word a line; <S> and </S> are the sentence-boundary tokens")
    dump.add_argument("output_file", help="HDF5 file to write (dataset 'embedding')")
    dump.add_argument("--batch-size", type=int, default=4096)
    dump.add_argument("--device", default="cpu")
    dump.set_defaults(run=run_dump_token_embeddings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CheckpointError, OSError, ValueError) as error:
        print(f"hf-elmo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
