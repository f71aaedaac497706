#!/usr/bin/env python
"""
Fine-tune ELMo for token classification (e.g. named entities) on a CoNLL-format file with transformers' Trainer.

    pip install "hf-elmo[train]"
    python examples/token_classification.py --model path/to/elmo-checkpoint --output-dir ner-model
    python examples/token_classification.py --model ... --train-file train.conll --eval-file dev.conll --epochs 3

As allennlp uses ELMo inside a task model, the biLM stays frozen and only the scalar mix of its layers and the
linear head on top are trained (with dropout on the mix); `--unfreeze-bilm` fine-tunes the biLM too. The choice is
`config.freeze_bilm`, saved with the model.

The input: one word per line, whitespace-separated columns, the word first and its tag last (CoNLL-2003's
`word POS chunk NER` works as is); a blank line ends a sentence; `-DOCSTART-` lines are skipped. ELMo has one
position per word, so each word's label sits at its own position: no sub-word alignment. Padding positions get
the label -100, which the loss ignores (transformers' `DataCollatorForTokenClassification` over
`ElmoTokenizer.pad`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import Dataset
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    Trainer,
    TrainingArguments,
)

import hf_elmo  # noqa: F401  (registers ELMo with the Auto classes)

HERE = Path(__file__).resolve().parent
DEFAULT_TRAIN_FILE = HERE / "data" / "tiny_ner.conll"


def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """(words, tags) of each sentence of a CoNLL-format file."""
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            if len(columns) < 2:
                raise ValueError(f"{path}, line {number}: expected a word and a tag, got {line.strip()!r}")
            words.append(columns[0])
            tags.append(columns[-1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def to_dataset(sentences: list[tuple[list[str], list[str]]], tokenizer, label_to_id: dict[str, int]) -> Dataset:
    """Character ids `(words, 50)` and word-aligned label ids per sentence."""
    rows = {"input_ids": [], "labels": []}
    for words, tags in sentences:
        rows["input_ids"].append(tokenizer.encode_words(words))
        rows["labels"].append([label_to_id[tag] for tag in tags])
    return Dataset.from_dict(rows)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an hf-elmo checkpoint folder or Hub id")
    parser.add_argument("--train-file", default=str(DEFAULT_TRAIN_FILE))
    parser.add_argument("--eval-file", help="default: the training file")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--unfreeze-bilm", action="store_true", help="fine-tune the biLM too (freeze_bilm=False)")
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train = read_conll(args.train_file)
    evaluation = read_conll(args.eval_file) if args.eval_file else train
    labels = sorted({tag for _, tags in train + evaluation for tag in tags})
    label_to_id = {label: i for i, label in enumerate(labels)}

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_to_id,
        freeze_bilm=not args.unfreeze_bilm)
    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size, seed=args.seed,
        save_strategy="no", report_to="none", logging_steps=10)
    trainer = Trainer(model=model, args=training_args, train_dataset=to_dataset(train, tokenizer, label_to_id),
                      eval_dataset=to_dataset(evaluation, tokenizer, label_to_id),
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    loss_after = trainer.evaluate()["eval_loss"]
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"eval loss {loss_before:.4f} -> {loss_after:.4f}; model saved to {args.output_dir}")
    return {"loss_before": loss_before, "loss_after": loss_after}


if __name__ == "__main__":
    main()
