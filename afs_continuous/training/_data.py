"""Reading chat JSONL and tokenizing it for the LoRA trainer (private).

:func:`load_chat_records` (re-exported by :mod:`afs_continuous.training.lora`)
reads the three supported line formats into message lists; :func:`_tokenize`
renders one conversation (system prompt, earlier turns, every assistant turn)
with the tokenizer's chat template and masks every non-assistant token; :func:`_build_splits` turns the records into the
tokenized train and validation ``datasets.Dataset`` splits; :class:`_PadCollator`
pads a batch for ``transformers.Trainer``.

Importing this module is cheap: ``torch`` and ``datasets`` are imported inside
the functions that need them.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pathlib
from typing import TYPE_CHECKING, Any

from afs_continuous.errors import TrainingError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from afs_continuous.training.lora import LoRATrainingConfig

__all__ = ["Message", "load_chat_records"]

logger = logging.getLogger("afs_continuous.training")

Message = dict[str, str]


def load_chat_records(data_path: str | os.PathLike[str]) -> list[list[Message]]:
    """Read a JSONL training file into chat conversations.

    One JSON object per line, in any of three formats (mixing is allowed)::

        {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
        {"instruction": "...", "input": "... (optional)", "output": "..."}   # Alpaca
        {"prompt": "...", "completion": "..."}

    Blank lines are skipped; ``.gz`` files are decompressed.

    Args:
        data_path (str | os.PathLike): The JSONL (or JSONL.gz) file.

    Returns:
        list[list[dict[str, str]]]: One message list per line, each message
        ``{"role": str, "content": str}``.

    Raises:
        TrainingError: The file is missing or empty, a line is not a JSON
            object, or a line matches none of the formats.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
        >>> _ = path.write_text('{"prompt": "2+2?", "completion": "4"}\\n', encoding="utf-8")
        >>> load_chat_records(path)
        [[{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]]
    """
    path = pathlib.Path(data_path)
    if not path.is_file():
        raise TrainingError(f"training data file not found: '{path}' (expected a JSONL file of chat samples)")
    opener = gzip.open if path.suffix == ".gz" else open
    records: list[list[Message]] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            records.append(_to_messages(obj, where=f"{path}:{lineno}"))
    if not records:
        raise TrainingError(f"training data file is empty: '{path}' has no JSON lines")
    return records


def _to_messages(obj: Any, *, where: str) -> list[Message]:
    """Normalise one parsed JSONL line into a message list."""
    if not isinstance(obj, dict):
        raise TrainingError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise TrainingError(f"{where}: 'messages' must be a list of {{'role': str, 'content': str}} objects")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    for prompt_key, answer_key in (("instruction", "output"), ("prompt", "completion")):
        if prompt_key in obj and answer_key in obj:
            prompt, answer = obj[prompt_key], obj[answer_key]
            extra = obj.get("input") if prompt_key == "instruction" else None
            if not isinstance(prompt, str) or not isinstance(answer, str):
                raise TrainingError(f"{where}: {prompt_key!r} and {answer_key!r} must be strings")
            if isinstance(extra, str) and extra.strip():
                prompt = f"{prompt}\n\n{extra}"
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    raise TrainingError(
        f"{where}: unrecognised sample with keys {sorted(obj)}; expected 'messages', "
        "'instruction' + 'output', or 'prompt' + 'completion'"
    )


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], text: str
) -> list[tuple[int, int]] | None:
    """Character spans of the assistant turns in ``text`` (the rendered chat).

    Renders each prefix of the conversation; an assistant turn spans from the
    end of the prefix with the generation prompt to the end of the prefix
    including that turn (its end-of-turn token too). Returns None when the
    template does not render prefixes as prefixes of the full text (the caller
    then locates the turns by their text).
    """
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            start = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            end = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        except Exception:  # noqa: BLE001 - templates may reject partial conversations
            return None
        if not (isinstance(start, str) and isinstance(end, str) and text.startswith(start) and text.startswith(end)):
            return None
        spans.append((len(start), len(end)))
    return spans


def _content_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message], text: str) -> list[tuple[int, int]] | None:
    """Character spans of the assistant turns found by their text, for templates whose prefixes are
    not prefixes of the whole rendering (e.g. one that closes the conversation with a final marker).

    Walks the rendered ``text`` in order, finding each message's content after the previous one; an
    assistant span is its content plus the end-of-sequence token right after it, when there is one
    (so the model still learns to stop). None when a content is not found verbatim (the template
    rewrites it): the caller then skips the sample rather than train on prompt tokens.
    """
    eos = getattr(tokenizer, "eos_token", None)
    spans = []
    cursor = 0
    for message in messages:
        content = message["content"]
        if not content:
            continue
        pos = text.find(content, cursor)
        if pos < 0:
            return None
        cursor = pos + len(content)
        if message["role"] == "assistant":
            end = cursor + len(eos) if isinstance(eos, str) and eos and text.startswith(eos, cursor) else cursor
            spans.append((pos, end))
    return spans


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], *, max_length: int, train_on_prompt: bool
) -> dict[str, list[int]] | None:
    """Tokenize one conversation with its chat template into input_ids and labels.

    Labels are the input ids with every non-assistant token set to -100 (system prompt, user and
    tool turns, role markers), and every assistant turn trained on, unless ``train_on_prompt``.
    The assistant turns are located by rendering the conversation's prefixes, or, for a template
    that does not render prefixes as prefixes, by their text (:func:`_content_spans`). Returns
    None when nothing is left to train on after truncation, or when the assistant turns cannot be
    located (never trains on prompt tokens by accident).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if train_on_prompt:
        ids = list(tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"])
        return {"input_ids": ids, "labels": list(ids)} if len(ids) >= 2 else None
    spans = _assistant_spans(tokenizer, messages, text)
    if spans is None:
        spans = _content_spans(tokenizer, messages, text)
    if spans is None:
        return None
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length,
                        return_offsets_mapping=True)
        input_ids: list[int] = list(enc["input_ids"])
        labels = [
            tok if any(lo <= start < hi for lo, hi in spans) else -100
            for tok, (start, _end) in zip(input_ids, enc["offset_mapping"], strict=True)
        ]
    else:  # no offsets: tokenize the pieces between span boundaries one by one
        input_ids, labels = [], []
        cuts = sorted({0, len(text), *(x for span in spans for x in span)})
        for lo, hi in zip(cuts, cuts[1:]):
            piece = list(tokenizer(text[lo:hi], add_special_tokens=False)["input_ids"])
            trained = any(a <= lo < b for a, b in spans)
            input_ids += piece
            labels += piece if trained else [-100] * len(piece)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if len(input_ids) < 2 or all(label == -100 for label in labels[1:]):
        return None
    return {"input_ids": input_ids, "labels": labels}


class _PadCollator:
    """Right-pad a batch: input ids with the pad id, labels with -100, attention mask 0."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(f["labels"]) + [-100] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def _build_splits(
    records: list[list[Message]], tokenizer: Any, config: LoRATrainingConfig, data_path: str | os.PathLike[str]
) -> tuple[Any, Any]:
    """Tokenized ``datasets.Dataset`` train split and validation split (None when disabled)."""
    from datasets import Dataset

    samples = []
    for messages in records:
        if any(m["role"] == "assistant" for m in messages):
            sample = _tokenize(
                tokenizer, messages, max_length=config.max_length, train_on_prompt=config.train_on_prompt
            )
            if sample is not None:
                samples.append(sample)
    if len(samples) < len(records):
        logger.warning(
            "skipped %d of %d samples with no assistant tokens within max_length=%d (or whose assistant turns "
            "the chat template rewrites, so that they cannot be told from the prompt)",
            len(records) - len(samples), len(records), config.max_length,
        )
    n_eval = round(len(samples) * config.validation_fraction)
    if config.validation_fraction > 0:
        n_eval = max(n_eval, 1)
    if len(samples) - n_eval < 1:
        raise TrainingError(
            f"not enough usable samples in '{data_path}': {len(samples)} of {len(records)} have assistant "
            f"tokens within max_length={config.max_length}, need at least {n_eval + 1}"
        )
    dataset = Dataset.from_list(samples)
    if not n_eval:
        return dataset, None
    split = dataset.train_test_split(test_size=n_eval, seed=config.seed, shuffle=True)
    return split["train"], split["test"]
