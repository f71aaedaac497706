"""Configuration of an ELMo bidirectional language model (character CNN + biLSTM)."""

from __future__ import annotations

from transformers import PretrainedConfig

# The official English releases all share this character CNN (ELMO_FORMAT.md).
OFFICIAL_CHAR_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]


class ElmoConfig(PretrainedConfig):
    r"""
    Configuration of [`ElmoModel`]: the shapes of the original `options.json` plus how the layers are mixed.

    Defaults are the "Original" ELMo (`elmo_2x4096_512_2048cnn_2xhighway`).

    Args:
        char_embedding_dim: Width of each character embedding (`options.char_cnn.embedding.dim`).
        char_filters: `[[width, n_filters], ...]` of the character convolutions (`options.char_cnn.filters`).
        num_highway_layers: Highway layers after the convolutions (`options.char_cnn.n_highway`).
        num_characters: Character vocabulary size including the padding id 0 (262 for inference).
        max_characters_per_token: Character slots per word, begin/end-of-word markers included.
        char_activation: `"relu"` or `"tanh"`, applied after the max over positions.
        lstm_dim: Cell size of each LSTM (`options.lstm.dim`).
        projection_dim: Size every LSTM output is projected to; the token vector has this size too.
        num_hidden_layers: biLSTM layers (`options.lstm.n_layers`).
        cell_clip: Cell state clipped to `[-cell_clip, cell_clip]`; `None` disables it.
        proj_clip: Projected output clipped to `[-proj_clip, proj_clip]`; `None` disables it.
        use_skip_connections: Add each LSTM layer's input to its output, from the second layer on.
        scalar_mix_parameters: Fixed, untrainable pre-softmax layer weights for the ELMo vector
            (`n_layers + 1` values; e.g. `[-1e9, -1e9, 1]` selects the top layer). `None` = trainable, equal at start.
        do_layer_norm: Layer-normalise each layer (over unpadded words) before mixing, as allennlp's `ScalarMix`.
        mix_dropout: Dropout on the ELMo vector in train mode (allennlp's `Elmo` uses 0.5).
        num_cached_words: Number of words whose token vectors are stored in the checkpoint so they skip
            the character CNN (allennlp's `vocab_to_cache`); 0 for none.
        word_vocab_size: Rows of a word embedding (ELMoForManyLangs), id 0 being "no word" (padding); 0 for none.
        word_embedding_dim: Width of that word embedding; it is concatenated before the highway output and both
            go through the projection (which then always exists). 0 for none, as in every bilm-tf model.
        boundary_char_ids: The character ids of the sentence-boundary tokens `[<S>, </S>]` (each
            `max_characters_per_token` ids) for models with their own character table; `None` = bilm-tf's.
        boundary_word_ids: The word ids of `[<S>, </S>]` when there is a word embedding.

    With a word embedding, `input_ids` carries `max_characters_per_token + 1` ids per word, the last one being the
    word id (see `ElmoManyLangsTokenizer`); `ids_per_word` says how many.
        freeze_bilm: For the task heads (`ElmoForTokenClassification`, `ElmoForSequenceClassification`): keep the
            biLM (character CNN and LSTMs) fixed and train only the scalar mix and the head, as allennlp uses ELMo
            in a task model. `False` fine-tunes the biLM too. Stored with the checkpoint, so training resumed from
            it makes the same choice; override with `from_pretrained(..., freeze_bilm=False)`.
        lm_vocab_size: Words of the language model's softmax (`ElmoForPreTraining`), one row each; 0 for a
            checkpoint without the LM head. The words themselves are in the folder's `lm_vocab.txt`.
        lm_bos_id / lm_eos_id / lm_unk_id: Softmax rows of `<S>`, `</S>` and `<UNK>` (bilm-tf vocabularies start
            with these three).
        dropout: The language model's training dropout (bilm-tf's `options.dropout`, 0.1 in its `train_elmo.py`):
            `ElmoForPreTraining` in train mode drops each LSTM layer's input and the top layer's output before the
            softmax. Nothing else uses it (`ElmoModel` never drops inside the biLM).

    How the model runs (prepacked CPU weights, the LSTM backend, chunk sizes) is not configuration: see
    `ElmoRuntimeOptions`, given to `from_pretrained` as keywords or to `model.set_runtime_options`.
    """

    model_type = "elmo"

    def __init__(
        self,
        char_embedding_dim: int = 16,
        char_filters: list[list[int]] | None = None,
        num_highway_layers: int = 2,
        num_characters: int = 262,
        max_characters_per_token: int = 50,
        char_activation: str = "relu",
        lstm_dim: int = 4096,
        projection_dim: int = 512,
        num_hidden_layers: int = 2,
        cell_clip: float | None = 3.0,
        proj_clip: float | None = 3.0,
        use_skip_connections: bool = True,
        scalar_mix_parameters: list[float] | None = None,
        do_layer_norm: bool = False,
        mix_dropout: float = 0.5,
        num_cached_words: int = 0,
        word_vocab_size: int = 0,
        word_embedding_dim: int = 0,
        boundary_char_ids: list[list[int]] | None = None,
        boundary_word_ids: list[int] | None = None,
        freeze_bilm: bool = True,
        lm_vocab_size: int = 0,
        lm_bos_id: int = 0,
        lm_eos_id: int = 1,
        lm_unk_id: int = 2,
        dropout: float = 0.1,
        **kwargs,
    ):
        self.char_embedding_dim = char_embedding_dim
        self.char_filters = [list(f) for f in (char_filters or OFFICIAL_CHAR_FILTERS)]
        self.num_highway_layers = num_highway_layers
        self.num_characters = num_characters
        self.max_characters_per_token = max_characters_per_token
        self.char_activation = char_activation
        self.lstm_dim = lstm_dim
        self.projection_dim = projection_dim
        self.num_hidden_layers = num_hidden_layers
        self.cell_clip = cell_clip
        self.proj_clip = proj_clip
        self.use_skip_connections = use_skip_connections
        self.scalar_mix_parameters = list(scalar_mix_parameters) if scalar_mix_parameters is not None else None
        self.do_layer_norm = do_layer_norm
        self.mix_dropout = mix_dropout
        self.num_cached_words = num_cached_words
        self.word_vocab_size = word_vocab_size
        self.word_embedding_dim = word_embedding_dim
        self.boundary_char_ids = [list(ids) for ids in boundary_char_ids] if boundary_char_ids is not None else None
        self.boundary_word_ids = list(boundary_word_ids) if boundary_word_ids is not None else None
        self.freeze_bilm = bool(freeze_bilm)
        self.lm_vocab_size = lm_vocab_size
        self.lm_bos_id, self.lm_eos_id, self.lm_unk_id = lm_bos_id, lm_eos_id, lm_unk_id
        self.dropout = dropout
        # Checkpoints converted by hf-elmo 0.1 stored this runtime setting here; it is no longer configuration.
        kwargs.pop("prepack_cpu_weights", None)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if self.char_activation not in ("relu", "tanh"):
            raise ValueError(f"char_activation must be 'relu' or 'tanh', got {self.char_activation!r}")
        if self.max_characters_per_token < 3:
            raise ValueError(f"max_characters_per_token must be at least 3, got {self.max_characters_per_token}")
        for entry in self.char_filters:
            if len(entry) != 2 or entry[0] < 1 or entry[1] < 1 or entry[0] > self.max_characters_per_token:
                raise ValueError(f"char_filters entries must be [width, n_filters] with 1 <= width <= "
                                 f"max_characters_per_token, got {entry}")
        for name in ("char_embedding_dim", "lstm_dim", "projection_dim", "num_hidden_layers", "num_characters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_highway_layers < 0 or self.num_cached_words < 0:
            raise ValueError("num_highway_layers and num_cached_words must not be negative")
        if self.lm_vocab_size < 0:
            raise ValueError(f"lm_vocab_size must not be negative, got {self.lm_vocab_size}")
        if self.lm_vocab_size and not all(0 <= i < self.lm_vocab_size for i in (self.lm_bos_id, self.lm_eos_id,
                                                                                self.lm_unk_id)):
            raise ValueError(f"lm_bos_id, lm_eos_id and lm_unk_id must be rows of the {self.lm_vocab_size}-word "
                             f"softmax, got {self.lm_bos_id}, {self.lm_eos_id}, {self.lm_unk_id}")
        if self.scalar_mix_parameters is not None and len(self.scalar_mix_parameters) != self.num_hidden_layers + 1:
            raise ValueError(
                f"scalar_mix_parameters needs num_hidden_layers + 1 = {self.num_hidden_layers + 1} values, "
                f"got {len(self.scalar_mix_parameters)}"
            )
        self._validate_vocabularies()

    def _validate_vocabularies(self) -> None:
        """The word embedding and boundary ids of models with their own character table (ELMoForManyLangs)."""
        if (self.word_vocab_size > 0) != (self.word_embedding_dim > 0) or min(self.word_vocab_size,
                                                                               self.word_embedding_dim) < 0:
            raise ValueError(f"word_vocab_size ({self.word_vocab_size}) and word_embedding_dim "
                             f"({self.word_embedding_dim}) must both be positive (a word embedding) or both 0")
        if self.boundary_char_ids is not None:
            if len(self.boundary_char_ids) != 2 or any(
                    len(ids) != self.max_characters_per_token or not all(0 < i < self.num_characters for i in ids)
                    for ids in self.boundary_char_ids):
                raise ValueError(f"boundary_char_ids must be 2 lists of {self.max_characters_per_token} character "
                                 f"ids in [1, {self.num_characters})")
        if self.word_embedding_dim and self.boundary_char_ids is None:
            raise ValueError("a word embedding comes with the model's own character table: boundary_char_ids needed")
        if (self.boundary_word_ids is not None) != (self.word_embedding_dim > 0):
            raise ValueError("boundary_word_ids are needed exactly when there is a word embedding")
        if self.boundary_word_ids is not None and (
                len(self.boundary_word_ids) != 2 or not all(0 < i < self.word_vocab_size for i in self.boundary_word_ids)):
            raise ValueError(f"boundary_word_ids must be 2 word ids in [1, {self.word_vocab_size})")

    @property
    def num_char_filters(self) -> int:
        """Total number of convolution filters: the width of the CNN output before the projection."""
        return sum(n for _, n in self.char_filters)

    @property
    def ids_per_word(self) -> int:
        """Ids per word in `input_ids`: the character ids, plus the word id when there is a word embedding."""
        return self.max_characters_per_token + (1 if self.word_embedding_dim else 0)

    @property
    def output_dim(self) -> int:
        """Width of every layer's word vectors: `2 * projection_dim` (forward and backward halves)."""
        return 2 * self.projection_dim


__all__ = ["ElmoConfig"]
