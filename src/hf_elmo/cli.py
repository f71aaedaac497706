"""The `hf-elmo` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import CheckpointError


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line (no traceback): bad files or arguments, failed pushes or downloads."""
    from .hub import HubPushError

    return (CheckpointError, OSError, ValueError, HubPushError)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hf-elmo convert` and of conversion/convert_elmo_original_to_hf.py."""
    from .conversion import MODEL_CARDS

    source = parser.add_mutually_exclusive_group(required=True)  # exactly one source
    source.add_argument("--options-file", help="options.json of a bilm-tf model (path or URL; with --weight-file)")
    source.add_argument("--elmoformanylangs", metavar="MODEL_DIR", type=Path,
                        help="an ELMoForManyLangs (HIT-SCIR) release folder: config.json, char.dic, *.pkl, ...")
    parser.add_argument("--weight-file", help="weights .hdf5 of the bilm-tf model (path or URL)")
    parser.add_argument("--language", help="with --elmoformanylangs: the model's language (e.g. zh), when its "
                                           "config.json does not name it")
    parser.add_argument("--output-dir", required=True, type=Path, help="checkpoint folder to write (replaced at the end)")
    parser.add_argument("--vocab-file", help="words whose token vectors are cached in the checkpoint (one a line)")
    parser.add_argument("--model-card", default="auto", choices=["auto", "generic", *MODEL_CARDS],
                        help="README.md to write: detected from the shapes by default")
    parser.add_argument("--cache-dir", type=Path, help="where URL downloads are cached (default ~/.cache/hf_elmo)")
    hub = parser.add_argument_group("push to the Hub (after converting; HF_ENDPOINT and HF_TOKEN are honoured)")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the converted folder to this Hub repository")
    hub.add_argument("--private", action="store_true", help="create the repository as private")
    hub.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    hub.add_argument("--commit-message", help="message of the upload commit")


def run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_elmoformanylangs, convert_original_checkpoint
    from .jobs.core import quiet_weight_progress

    if args.elmoformanylangs is not None:
        not_applicable = [flag for flag, value in (("--weight-file", args.weight_file), ("--vocab-file", args.vocab_file),
                          ("--cache-dir", args.cache_dir)) if value is not None]
        if args.model_card != "auto":
            not_applicable.append("--model-card")
        if not_applicable:
            raise ValueError(f"not used with --elmoformanylangs: {', '.join(not_applicable)}")
    else:
        if args.weight_file is None:
            raise ValueError("--options-file needs --weight-file")
        if args.language is not None:
            raise ValueError("--language applies to --elmoformanylangs only")
    with quiet_weight_progress():  # no "Writing model shards" bar for a one-second write
        if args.elmoformanylangs is not None:
            out = convert_elmoformanylangs(args.elmoformanylangs, args.output_dir, language=args.language)
        else:
            card = None if args.model_card == "generic" else args.model_card
            out = convert_original_checkpoint(
                args.options_file, args.weight_file, args.output_dir, vocab_file=args.vocab_file, model_card=card,
                cache_dir=args.cache_dir,
            )
    print(f"wrote {out}")
    if args.push_to_hub:
        from .hub import push_checkpoint_folder

        result = push_checkpoint_folder(out, args.push_to_hub, private=args.private, revision=args.revision,
                                        commit_message=args.commit_message)
        if result.changed:
            print(f"pushed {out} to {result.repo_id}@{result.revision}: {result.commit_url}")
        else:
            print(f"{result.repo_id}@{result.revision} already holds this checkpoint: nothing to push "
                  f"(commit {result.commit_oid})")


def run_embed(args: argparse.Namespace) -> None:
    import torch

    from .jobs.core import load_model
    from .jobs.hdf5_job import embed_file

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = load_model(args.model, dtype=dtype, device=args.device)
    split_words = None
    if args.raw_text:
        from .tokenization_elmo import ElmoManyLangsTokenizer, ElmoTokenizer

        # ELMoForManyLangs checkpoints carry their own tokenizer (character table, word segmenter such as jieba).
        own_table = getattr(model.config, "boundary_char_ids", None) is not None
        split_words = (ElmoManyLangsTokenizer if own_table else ElmoTokenizer).from_pretrained(args.model).split_words
    summary = embed_file(
        model, args.input_file, args.output_file, output_format=args.output_format, batch_size=args.batch_size,
        use_sentence_keys=args.use_sentence_keys, forget_sentences=args.forget_sentences, split_words=split_words,
        overwrite=args.overwrite,
    )
    resumed = f", resumed at line {summary.resumed_from_line + 1}" if summary.resumed_from_line else ""
    blank = f", {summary.blank_lines} blank" if summary.blank_lines else ""
    print(f"wrote {summary.lines} sentences{blank} to {summary.output_file}{resumed}")


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hf-elmo embed` (allennlp's `elmo` command)."""
    from .jobs.hdf5_job import DEFAULT_BATCH_SIZE

    parser.add_argument("model", help="checkpoint folder or Hub repo id")
    parser.add_argument("input_file", type=Path, help="one sentence a line, words separated by whitespace")
    parser.add_argument("output_file", type=Path, help="HDF5 file to write")
    layers = parser.add_mutually_exclusive_group(required=True)
    layers.add_argument("--all", dest="output_format", action="store_const", const="all",
                        help="all layers: (n_layers + 1, n_words, D) per sentence")
    layers.add_argument("--top", dest="output_format", action="store_const", const="top",
                        help="the top biLSTM layer: (n_words, D)")
    layers.add_argument("--average", dest="output_format", action="store_const", const="average",
                        help="the average of all layers: (n_words, D)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="sentences per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="compute dtype (the file always stores float32)")
    parser.add_argument("--use-sentence-keys", action="store_true",
                        help="name datasets by sentence instead of line number")
    parser.add_argument("--forget-sentences", action="store_true", help="do not store sentence_to_index")
    parser.add_argument("--raw-text", action="store_true",
                        help="lines are raw text: split them with the tokenizer's word splitting (Moses; jieba for "
                             "Chinese ELMoForManyLangs models)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: discard an unfinished run and replace an existing output")


def run_dump_token_embeddings(args: argparse.Namespace) -> None:
    import torch

    from .jobs.core import load_model, read_vocab_file
    from .jobs.hdf5_job import dump_token_embeddings

    words = read_vocab_file(args.vocab_file, unique=False)
    model = load_model(args.model, device=args.device)
    with torch.inference_mode():
        out = dump_token_embeddings(model, words, args.output_file, batch_size=args.batch_size)
    print(f"wrote {len(words)} token vectors to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-elmo", description="ELMo as a Hugging Face transformers model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert an original checkpoint (bilm-tf options.json + weights.hdf5, or an ELMoForManyLangs "
        "folder) to a checkpoint folder")
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)

    embed = commands.add_parser(
        "embed", help="embed a file of sentences into HDF5 (allennlp's elmo command; resumable)",
        description="Embed one sentence per line into allennlp's `elmo` HDF5 layout. Killed and restarted with "
        "the same arguments, it resumes where it stopped.",
    )
    add_embed_arguments(embed)
    embed.set_defaults(run=run_embed)

    dump = commands.add_parser(
        "dump-token-embeddings", help="write context-free token vectors of a vocabulary (bilm-tf's dump_token_embeddings)"
    )
    dump.add_argument("model", help="checkpoint folder or Hub repo id")
    dump.add_argument("vocab_file", help="one word a line; <S> and </S> are the sentence-boundary tokens")
    dump.add_argument("output_file", help="HDF5 file to write (dataset 'embedding')")
    dump.add_argument("--batch-size", type=int, default=4096)
    dump.add_argument("--device", default="cpu")
    dump.set_defaults(run=run_dump_token_embeddings)
    from .training.vocabulary import add_build_vocab_arguments, run_build_vocab

    build_vocab = commands.add_parser("build-vocab", help="count a training corpus into bilm-tf's vocabulary file")
    add_build_vocab_arguments(build_vocab)
    build_vocab.set_defaults(run=run_build_vocab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except _known_errors() as error:
        print(f"hf-elmo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
