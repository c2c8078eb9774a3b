"""Tokenizers: byte-level BPE trained on public server text, or GPT-2's own.

The BPE tokenizer is trained with Hugging Face `tokenizers` on the public slice of
the held-out pool only, never on a node's private partition and never on the
evaluation text. It is wrapped as a `PreTrainedTokenizerFast` with explicit
end-of-text and padding tokens, so `save_pretrained` and `pipeline` work on it.
"""

from __future__ import annotations

import hashlib
import logging
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from linguachain.config import TokenizerConfig

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # The trainer's own progress bar, only where a person watches a terminal.
        show_progress=sys.stderr.isatty(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer.to_str())


def wrap_tokenizer(tokenizer_json: str) -> PreTrainedTokenizerFast:
    """Wrap a serialized `tokenizers.Tokenizer` with its special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


def load_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """Load the pretrained GPT-2 tokenizer from the hub, with a padding token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained("gpt2")
    except OSError as error:
        raise RuntimeError(
            "Could not load the pretrained GPT-2 tokenizer from the Hugging Face hub"
            f" ({error}). Without hub access use tokenizer.name='bpe', which trains"
            " a tokenizer on local public text."
        ) from error
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def build_tokenizer(
    config: TokenizerConfig, public_texts: list[str]
) -> PreTrainedTokenizerFast:
    """Build the run's tokenizer from config and public server-side text."""
    if config.name == "gpt2":
        return load_gpt2_tokenizer()
    logger.info(
        "Training a byte-level BPE tokenizer of %d tokens on %d public lines",
        config.vocab_size,
        len(public_texts),
    )
    tokenizer = train_bpe_tokenizer(public_texts, config.vocab_size)
    logger.info(
        "Trained byte-level BPE tokenizer: %d tokens from %d public lines",
        len(tokenizer),
        len(public_texts),
    )
    return tokenizer


def serialize_tokenizer(tokenizer: PreTrainedTokenizerFast) -> str:
    """Serialize a fast tokenizer to the JSON string nodes receive."""
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_fingerprint(tokenizer_json: str) -> str:
    """Return the SHA-256 hex digest of a serialized tokenizer."""
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
