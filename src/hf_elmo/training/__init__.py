"""Training ELMo's biLM language model the way bilm-tf does (issue 11): the building blocks.

- `vocabulary`: `hf-elmo build-vocab`, bilm-tf's word vocabulary from a corpus (`build_vocabulary`).
- `data`: bilm-tf's training batches streamed from text files (`LMStreamDataset`, resumable), the sentence-level
  batches of the objective tests (`LMSentenceDataset`), and the collator for `Trainer` (`ElmoLMDataCollator`).

Nothing here is remote code: these modules may import from the rest of hf_elmo.
"""
