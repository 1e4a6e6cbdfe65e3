"""A tiny randomly initialized Llama with a character-level tokenizer, built in code.

For plumbing and shape tests (no files, no network): a real transformers model whose
weights are random, so it answers arbitrarily but runs every code path the bundled
models run (chat template, padding, generation, hidden states, attentions).
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import torch

from safescale.models.backend import LanguageModel

__all__ = ["build_tiny_model"]

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _char_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    # Two-character words " A".." D" so option letters after "Answer:" are single tokens,
    # as in real BPE vocabularies.
    for letter in "ABCDEFGH":
        vocab[f" {letter}"] = len(vocab)
    merges = [(" ", letter) for letter in "ABCDEFGH"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>" if chat else "</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat:
        fast.chat_template = _CHAT_TEMPLATE
    return fast


def build_tiny_model(
    seed: int = 0,
    *,
    n_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    context_length: int = 8192,
    chat: bool = True,
    sliding_window: int | None = None,
    prefix_cache_mb: float = 0,
) -> LanguageModel:
    """A tiny random Llama (GQA, RoPE) with a character tokenizer.

    Args:
        seed: initializes the weights (same seed, same model).
        n_layers, hidden, heads, kv_heads: architecture.
        context_length: ``max_position_embeddings``.
        chat: give the tokenizer a ChatML template (else the plain template is used).
        sliding_window: a tiny random Mistral instead, every layer attending to the
            last ``sliding_window`` positions only (its KV cache keeps only those).
        prefix_cache_mb: the model's prefix cache bound (0: none).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    tokenizer = _char_tokenizer(chat)
    config_class, model_class = (
        (LlamaConfig, LlamaForCausalLM)
        if sliding_window is None
        else (MistralConfig, MistralForCausalLM)
    )
    extra = {} if sliding_window is None else {"sliding_window": sliding_window}
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    family = "llama" if sliding_window is None else f"mistral-sw{sliding_window}"
    return LanguageModel(
        model,
        tokenizer,
        name=f"tiny-{family}-{n_layers}x{hidden}-seed{seed}",
        model_hash=digest.hexdigest(),
        use_chat_template=chat,
        prefix_cache_mb=prefix_cache_mb,
    )


def save_tiny_model(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write :func:`build_tiny_model` as a Hugging Face model directory (safetensors +
    tokenizer), so a config can name it as a model ``spec`` and the real runner loads
    it like any local model."""
    path = Path(path)
    lm = build_tiny_model(seed, **kwargs)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path
