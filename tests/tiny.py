"""Tiny offline language models and texts for the end-to-end tests: a word-level tokenizer and random models."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

WORDS = (
    "the a cat dog sat ran on in park mat hello world red green blue one two three four five six seven eight nine "
    "ten house tree river stone light dark old new small big quick slow happy sad king queen road field sun moon "
    "star rain snow wind fire water bird fish horse cow sheep bread milk tea book pen door window"
).split()


def corpus(num_words: int = 3000, seed: int = 0) -> str:
    """Seeded sentences over WORDS, every word present."""
    rng = random.Random(seed)
    words = list(WORDS) + [rng.choice(WORDS) for _ in range(num_words - len(WORDS))]
    return " ".join(words)


def word_tokenizer(text: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 16, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def save_tiny(folder: Path, text: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A folder with a tiny random llama and its word-level tokenizer, as save_pretrained writes them."""
    tokenizer = word_tokenizer(text)
    tiny_llama(len(tokenizer), seed, dtype=dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
