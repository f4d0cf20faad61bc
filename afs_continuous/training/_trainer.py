"""The ``transformers.Trainer`` run of the reference LoRA trainer (private; used by
:mod:`afs_continuous.training.lora`): evaluate, train, evaluate again, and forward each logged
training loss to the caller's callback and the ``afs_continuous.training`` logger."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from afs_continuous.training._data import _PadCollator

if TYPE_CHECKING:
    from afs_continuous.training.lora import LoRATrainingConfig

logger = logging.getLogger("afs_continuous.training")

LogCallback = Callable[[dict[str, Any]], None]


def _run_trainer(
    model: Any, tokenizer: Any, train_set: Any, eval_set: Any, config: LoRATrainingConfig, device: str,
    emit: LogCallback,
) -> tuple[float | None, float, float | None, Any]:
    """Evaluate, train and evaluate again with ``transformers.Trainer``.

    Returns ``(eval_loss_before, train_loss, eval_loss_after, trainer.state)``;
    the eval losses are None without a validation split.
    """
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    with tempfile.TemporaryDirectory(prefix="afs-lora-") as scratch:  # nothing is saved there
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps if config.max_steps is not None else -1,
            learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            logging_steps=config.logging_steps,
            seed=config.seed,
            data_seed=config.seed,
            use_cpu=device == "cpu",
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,  # the collator builds exactly the model's inputs
            label_names=["labels"],
            prediction_loss_only=True,  # never keep vocab-sized logits around
            dataloader_pin_memory=device == "cuda",
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=_PadCollator(int(tokenizer.pad_token_id)),
            train_dataset=train_set,
            eval_dataset=eval_set,
            callbacks=[_log_callback(emit)],
        )
        # Library code must not print: drop the stdout printer (and any bar).
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        eval_before = float(trainer.evaluate()["eval_loss"]) if eval_set is not None else None
        train_loss = float(trainer.train().training_loss)
        eval_after = float(trainer.evaluate()["eval_loss"]) if eval_set is not None else None
    return eval_before, train_loss, eval_after, trainer.state


def _make_emitter(on_log: LogCallback | None) -> LogCallback:
    level = logging.INFO if on_log is None else logging.DEBUG

    def emit(entry: dict[str, Any]) -> None:
        logger.log(level, "step %d loss %.4f (lr %.3g, epoch %.2f)", entry["step"], entry["loss"],
                   entry["learning_rate"], entry["epoch"])
        if on_log is not None:
            on_log(entry)

    return emit


def _log_callback(emit: LogCallback) -> Any:
    """A ``TrainerCallback`` forwarding each logged training loss to ``emit``."""
    from transformers import TrainerCallback

    class _ForwardLosses(TrainerCallback):  # type: ignore[misc]
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                emit({
                    "step": int(state.global_step),
                    "loss": float(logs["loss"]),
                    "learning_rate": float(logs.get("learning_rate", math.nan)),
                    "epoch": float(logs.get("epoch", state.epoch or 0.0)),
                })

    return _ForwardLosses()
