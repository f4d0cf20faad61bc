"""A tiny, randomly initialised Llama model with a locally trained tokenizer.

For tests and demos: a real model architecture with random weights; it cannot
answer prompts. It exists so that the LoRA trainer can run end to end (load,
tokenize with a chat template, train, evaluate, save, reload) in seconds on a
CPU and without a model hub.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained
with the ``tokenizers`` library on the texts passed in, and the model is built
from a ``LlamaConfig``. ``torch``, ``transformers`` and ``tokenizers`` are
imported inside :func:`build_tiny_model`, so importing this module is cheap.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from afs_continuous.errors import ConfigError
from afs_continuous.training.lora import _no_progress_bars

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "TINY_LORA_SETTINGS", "build_tiny_model"]

#: ``LoRATrainingConfig`` overrides that make the loss of the tiny model fall
#: visibly within one short epoch (about 7.6 -> 6.5 nats on 300 AlpacaEval
#: samples, 34 steps). Its output head is random and frozen, so adapters on
#: the attention projections alone (the llama default) can barely move the
#: logits (7.6 -> 7.5); adapting ``lm_head`` too lets LoRA learn the token
#: distribution. The default learning rate (2e-4) is for real pretrained models.
TINY_LORA_SETTINGS: dict[str, object] = {
    "learning_rate": 3e-3,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"],
}

#: Special tokens of the tiny tokenizer; the role markers are single tokens.
SPECIAL_TOKENS: dict[str, str] = {
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "pad_token": "<|pad|>",
}
_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

#: Jinja chat template of the tiny tokenizer. One turn renders as
#: ``<|role|>\ncontent<|eos|>\n``; the generation prompt is ``<|assistant|>\n``.
#: Written on one line because transformers renders templates with
#: ``trim_blocks``, which would swallow a newline after a block tag.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_model(
    output_dir: str | pathlib.Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> pathlib.Path:
    """Build and save a tiny random ``LlamaForCausalLM`` and its tokenizer.

    For tests and demos: a real model architecture with random weights; it
    cannot answer prompts. The directory it writes loads with
    ``AutoTokenizer.from_pretrained(path)`` and
    ``AutoModelForCausalLM.from_pretrained(path)`` like any local checkpoint,
    and the tokenizer's chat template works with ``apply_chat_template``.
    Takes about a second for a few hundred short texts (plus importing
    transformers). Train it with :data:`TINY_LORA_SETTINGS`, e.g.
    ``LoRATrainingConfig(base_model=str(path), **TINY_LORA_SETTINGS)``.

    Args:
        output_dir (str | pathlib.Path): Directory to save into; created if
            missing. Existing files of the same names are overwritten.
        texts (Iterable[str]): Corpus the byte-level BPE tokenizer is trained
            on (use the texts the model will be fine-tuned on). May be empty:
            the 256 byte symbols always cover any input.
        vocab_size (int, default 2000): Upper bound on the vocabulary size in
            tokens, special tokens included; a small corpus yields fewer
            merges and the model's embedding matrix matches the real size.
        hidden_size (int, default 64): Width of the residual stream; must be
            divisible by ``n_heads``. The MLP is ``4 * hidden_size`` wide.
        n_layers (int, default 2): Number of decoder layers.
        n_heads (int, default 4): Number of attention heads (no grouped-query
            attention: as many key/value heads).
        max_position_embeddings (int, default 512): Longest sequence the model
            is configured for, in tokens.
        seed (int, default 0): Seed of the random weight initialisation.

    Returns:
        pathlib.Path: ``output_dir``, holding ``config.json``,
        ``model.safetensors``, ``generation_config.json`` and the tokenizer
        files (``tokenizer.json``, ``tokenizer_config.json``, chat template).

    Raises:
        ConfigError: A size argument is out of range, or ``hidden_size`` is
            not divisible by ``n_heads``.

    Example:
        >>> import tempfile
        >>> from afs_continuous.training.tiny import build_tiny_model
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = build_tiny_model(tmp, ["hello world"] * 10)
        ...     sorted(p.name for p in path.glob("*.json"))
        ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']
    """
    _check_sizes(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        n_layers=n_layers,
        n_heads=n_heads,
        max_position_embeddings=max_position_embeddings,
    )
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    special = [SPECIAL_TOKENS["pad_token"], SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]]
    special += _ROLE_TOKENS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((str(t) for t in texts), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        model_max_length=max_position_embeddings,
        additional_special_tokens=_ROLE_TOKENS,
        **SPECIAL_TOKENS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # A private generator keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    with _no_progress_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _check_sizes(**sizes: int) -> None:
    """Raise ``ConfigError`` for a non-positive size or heads not dividing the width."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"build_tiny_model: {name} must be a positive int, got {value!r}")
    if sizes["vocab_size"] < 300:
        raise ConfigError(
            f"build_tiny_model: vocab_size must be >= 300 (256 byte symbols plus special "
            f"tokens), got {sizes['vocab_size']}"
        )
    if sizes["hidden_size"] % sizes["n_heads"]:
        raise ConfigError(
            f"build_tiny_model: hidden_size ({sizes['hidden_size']}) must be divisible by "
            f"n_heads ({sizes['n_heads']}); try hidden_size={sizes['n_heads'] * 16}"
        )
