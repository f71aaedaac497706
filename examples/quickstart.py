"""Quick start: convert the ELMo model this repository ships (bilm-tf's test model) and embed a few sentences.

    python examples/quickstart.py [--output-dir elmo-bilm-tf-fixture]

The model is tiny (a 2x64/16 biLM with random-looking weights trained on nothing in particular), so the
similarities show the mechanics, not linguistic quality; the same steps work on the official releases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

import hf_elmo  # noqa: F401  (registers "elmo" with the Auto classes)
from hf_elmo.conversion import convert_original_checkpoint

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bilm-tf" / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("elmo-bilm-tf-fixture"))
    args = parser.parse_args()

    folder = convert_original_checkpoint(FIXTURE / "options.json", FIXTURE / "lm_weights.hdf5", args.output_dir)
    print(f"converted bilm-tf's fixture model to {folder}/")

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    sentences = ["The bank raised its interest rates.", "She sat on the river bank.", "The bank approved the loan."]
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    print(f"input_ids          {tuple(enc['input_ids'].shape)}   (sentences, words, characters)")
    print(f"last_hidden_state  {tuple(out.last_hidden_state.shape)}   (sentences, words, 2 x projection_dim)")
    print(f"hidden_states      {len(out.hidden_states)} x {tuple(out.hidden_states[0].shape)}")

    def bank_vector(row: int) -> torch.Tensor:
        words = tokenizer.decode(enc["input_ids"][row]).split()
        return out.last_hidden_state[row, words.index("bank")]

    finance, river, loan = (bank_vector(i) for i in range(3))
    cosine = torch.nn.functional.cosine_similarity
    print(f"cosine('bank' finance, 'bank' loan)  = {cosine(finance, loan, dim=0):.4f}")
    print(f"cosine('bank' finance, 'bank' river) = {cosine(finance, river, dim=0):.4f}")
    token_layer = out.hidden_states[0]
    print(f"context-free layer 0 is identical for both: {torch.equal(token_layer[0, 1], token_layer[1, 5])}")


if __name__ == "__main__":
    main()
