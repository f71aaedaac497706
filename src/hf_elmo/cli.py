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

    # One source: a bilm-tf release (--options-file + --weight-file, optionally its --softmax-weight-file), a
    # bilm-tf training checkpoint (--tf-checkpoint), or an ELMoForManyLangs folder; checked in run_convert.
    parser.add_argument("--options-file", help="options.json of a bilm-tf model (path or URL); with --tf-checkpoint, "
                        "the one next to the checkpoint by default")
    parser.add_argument("--weight-file", help="weights .hdf5 of the bilm-tf model (path or URL)")
    parser.add_argument("--softmax-weight-file", help="the released softmax .hdf5 (softmax/W, softmax/b): converts "
                        "the language model; needs --vocab-file")
    parser.add_argument("--tf-checkpoint", metavar="CKPT",
                        help="a bilm-tf training checkpoint (folder or model.ckpt-N prefix) instead of --weight-file: "
                        "converts the language model, softmax included (needs pip install \"hf-elmo[tf]\")")
    parser.add_argument("--elmoformanylangs", metavar="MODEL_DIR", type=Path,
                        help="an ELMoForManyLangs (HIT-SCIR) release folder: config.json, char.dic, *.pkl, ...")
    parser.add_argument("--language", help="with --elmoformanylangs: the model's language (e.g. zh), when its "
                                           "config.json does not name it")
    parser.add_argument("--output-dir", required=True, type=Path, help="checkpoint folder to write (replaced at the end)")
    parser.add_argument("--vocab-file", help="with --tf-checkpoint or --softmax-weight-file: the softmax's word "
                        "vocabulary (bilm-tf's format, <S> </S> <UNK> first); otherwise words whose token vectors "
                        "are cached in the checkpoint (one a line)")
    parser.add_argument("--model-card", default="auto", choices=["auto", "generic", *MODEL_CARDS],
                        help="README.md to write: detected from the shapes by default")
    parser.add_argument("--cache-dir", type=Path, help="where URL downloads are cached (default ~/.cache/hf_elmo)")
    hub = parser.add_argument_group("push to the Hub (after converting; HF_ENDPOINT and HF_TOKEN are honoured)")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the converted folder to this Hub repository")
    hub.add_argument("--private", action="store_true", help="create the repository as private")
    hub.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    hub.add_argument("--commit-message", help="message of the upload commit")


def run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_elmoformanylangs, convert_original_checkpoint, convert_training_checkpoint
    from .jobs.core import quiet_weight_progress

    card = None if args.model_card == "generic" else args.model_card
    if args.elmoformanylangs is not None:
        given = [flag for flag, value in (
            ("--options-file", args.options_file), ("--weight-file", args.weight_file),
            ("--softmax-weight-file", args.softmax_weight_file), ("--tf-checkpoint", args.tf_checkpoint),
            ("--vocab-file", args.vocab_file), ("--cache-dir", args.cache_dir)) if value is not None]
        if args.model_card != "auto":
            given.append("--model-card")
        if given:
            raise ValueError(f"not used with --elmoformanylangs: {', '.join(given)}")
        with quiet_weight_progress():
            out = convert_elmoformanylangs(args.elmoformanylangs, args.output_dir, language=args.language)
    elif args.language is not None:
        raise ValueError("--language applies to --elmoformanylangs only")
    elif args.tf_checkpoint is not None:
        if args.weight_file is not None or args.softmax_weight_file is not None:
            raise ValueError("--tf-checkpoint holds the weights and the softmax: drop --weight-file and "
                             "--softmax-weight-file")
        if args.vocab_file is None:
            raise ValueError("--tf-checkpoint needs --vocab-file (the softmax's word vocabulary)")
        with quiet_weight_progress():
            out = convert_training_checkpoint(args.tf_checkpoint, args.vocab_file, args.output_dir,
                                              options_file=args.options_file, model_card=card)
    else:
        if args.options_file is None or args.weight_file is None:
            raise ValueError("the following arguments are required: --options-file and --weight-file "
                             "(or --tf-checkpoint, or --elmoformanylangs)")
        with quiet_weight_progress():  # no "Writing model shards" bar for a one-second write
            out = convert_original_checkpoint(
                args.options_file, args.weight_file, args.output_dir, vocab_file=args.vocab_file, model_card=card,
                cache_dir=args.cache_dir, softmax_weight_file=args.softmax_weight_file,
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


def run_export_original(args: argparse.Namespace) -> None:
    from .conversion import export_original_checkpoint

    export = export_original_checkpoint(args.model, args.original_dir)
    for item in export.left_out:
        print(f"hf-elmo export-original: note: not in bilm-tf's layout, not exported: {item}", file=sys.stderr)
    print(f"wrote {export.output_dir} ({', '.join(export.files)})")


def run_embed(args: argparse.Namespace) -> None:
    import torch

    from .jobs.core import load_model
    from .jobs.hdf5_job import embed_file

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = load_model(args.model, dtype=dtype, device=args.device)
    split_words = None
    if args.raw_text:
        from transformers import AutoTokenizer

        # The checkpoint's own tokenizer class and settings (ELMoForManyLangs: its word segmenter, such as jieba).
        split_words = AutoTokenizer.from_pretrained(args.model).split_words
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


# ------------------------------------------------------------------------------------------- language model (LM)
def _load_language_model(args: argparse.Namespace):
    import torch

    from .jobs.lm_job import ElmoLanguageModel

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    return ElmoLanguageModel.from_pretrained(args.model, device=args.device, dtype=dtype)


def run_perplexity(args: argparse.Namespace) -> None:
    import json

    from .jobs.lm_job import Perplexity, read_sentences

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    lm = _load_language_model(args)
    sentences = read_sentences(args.input_file, lm.tokenizer.split_words if args.raw_text else None)
    if args.stateful:
        scores = lm.stream_scores(sentences, args.batch_size or 1, progress=True)
    else:
        scores = lm.score_sentences(sentences, args.batch_size or 64, progress=True)
    summary = Perplexity.of(scores)  # before printing anything: an unscorable file prints nothing
    if args.per_sentence:
        for score in scores:
            if score.predictions:
                line = Perplexity.of([score]).as_dict()
                print(json.dumps({"line": score.line, **{k: v for k, v in line.items() if k != "tokens"}}))
    print(json.dumps(summary.as_dict()))


def run_next_word(args: argparse.Namespace) -> None:
    import json

    lm = _load_language_model(args)
    predict = lm.previous_words if args.previous else lm.next_words
    print(json.dumps(predict(args.prefix, top_k=args.top_k)))


def run_sample(args: argparse.Namespace) -> None:
    lm = _load_language_model(args)
    words = lm.sample(args.prefix, num_words=args.num_words, temperature=args.temperature, top_k=args.top_k,
                      seed=args.seed)
    print(" ".join([*args.prefix.split(), *words]))


def run_dump_softmax_embeddings(args: argparse.Namespace) -> None:
    lm = _load_language_model(args)
    out = lm.dump_softmax_embeddings(args.output_file)
    print(f"wrote the softmax and {len(lm.vocabulary)} char-CNN word vectors to {out}")


def add_language_model_commands(commands) -> None:
    """`perplexity`, `next-word`, `sample`, `dump-softmax-embeddings` (checkpoints converted with their softmax)."""

    def model_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="language-model checkpoint folder (converted with its softmax) or Hub repo id")

    def runtime_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
        parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                            help="compute dtype (the softmax is always normalised in float32 at least)")

    perplexity = commands.add_parser(
        "perplexity", help="bilm-tf's perplexity of a file of sentences (one a line)",
        description="Prints JSON: with --per-sentence one object per line, then always the summary {perplexity, "
        "forward_perplexity, backward_perplexity, tokens}.")
    model_arguments(perplexity)
    perplexity.add_argument("input_file", type=Path, help="one sentence a line, words separated by whitespace")
    perplexity.add_argument("--per-sentence", action="store_true", help="also print each line's perplexities")
    perplexity.add_argument("--stateful", action="store_true",
                            help="bilm-tf's test(): --batch-size streams of sentences, state carried between them")
    perplexity.add_argument("--batch-size", type=int,
                            help="sentences per forward pass (default 64); with --stateful, bilm-tf's batch_size "
                            "(default 1)")
    perplexity.add_argument("--raw-text", action="store_true", help="split lines with the tokenizer (Moses)")
    runtime_arguments(perplexity)
    perplexity.set_defaults(run=run_perplexity)

    next_word = commands.add_parser("next-word", help="the most probable next words after a prefix (forward LM)")
    model_arguments(next_word)
    next_word.add_argument("prefix", help="the words so far, separated by whitespace (may be empty)")
    next_word.add_argument("--top-k", type=int, default=5)
    next_word.add_argument("--previous", action="store_true",
                           help="the backward LM instead: the most probable words before the given words")
    runtime_arguments(next_word)
    next_word.set_defaults(run=run_next_word)

    sample = commands.add_parser("sample", help="continue a prefix word by word (lm_1b's sample mode)")
    model_arguments(sample)
    sample.add_argument("prefix", help="the words to continue, separated by whitespace (may be empty)")
    sample.add_argument("--num-words", type=int, default=20, help="at most this many words (stops at </S>)")
    sample.add_argument("--seed", type=int, help="random seed (same seed, device and model: same text)")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, help="draw from the k most probable words only")
    runtime_arguments(sample)
    sample.set_defaults(run=run_sample)

    dump = commands.add_parser("dump-softmax-embeddings",
                               help="write the softmax and every vocabulary word's char-CNN vector (lm_1b's dump mode)")
    model_arguments(dump)
    dump.add_argument("output_file", type=Path, help="HDF5 file to write")
    runtime_arguments(dump)
    dump.set_defaults(run=run_dump_softmax_embeddings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-elmo", description="ELMo as a Hugging Face transformers model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert an original checkpoint (bilm-tf options.json + weights.hdf5, or an ELMoForManyLangs "
        "folder) to a checkpoint folder")
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)

    export = commands.add_parser(
        "export-original", help="write a checkpoint folder back in bilm-tf's release layout (options.json, "
        "weights.hdf5; softmax.hdf5 and vocab.txt for a language model)",
        description="Write a converted or trained checkpoint in the original bilm-tf layout, which bilm-tf and "
        "allennlp load. ORIGINAL_DIR is replaced atomically, and only if it is new, empty or a previous export.")
    export.add_argument("model", help="checkpoint folder or Hub repo id")
    export.add_argument("original_dir", metavar="ORIGINAL_DIR", type=Path, help="folder to write")
    export.set_defaults(run=run_export_original)

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
    add_language_model_commands(commands)

    from .training.vocabulary import add_build_vocab_arguments, run_build_vocab

    build_vocab = commands.add_parser("build-vocab", help="count a training corpus into bilm-tf's vocabulary file")
    add_build_vocab_arguments(build_vocab)
    build_vocab.set_defaults(run=run_build_vocab)

    from .training.train_command import add_train_arguments, run_train

    train = commands.add_parser(
        "train", help="train ELMo's biLM on a corpus as bilm-tf does, or continue training a checkpoint (Trainer)",
        description="Train or continue training ELMo's bidirectional language model with transformers' Trainer, "
                    "as bilm-tf trains it. Killed, it continues from its last checkpoint when run again with "
                    "--resume.")
    add_train_arguments(train)
    # The Trainer's own options (TrainingArguments) pass through as they are typed.
    train.set_defaults(run=run_train, passes_unknown_options=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    passes_unknown = getattr(args, "passes_unknown_options", False)
    if unknown and not passes_unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if passes_unknown:
            args.run(args, unknown)
        else:
            args.run(args)
    except _known_errors() as error:
        print(f"hf-elmo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
