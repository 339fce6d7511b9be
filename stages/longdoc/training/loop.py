"""The one training loop of `finetune` and `train-head`: epochs, early stopping, resume.

    task = ...                                   # a TrainingTask: how a step and validation go
    settings = LoopSettings(max_epochs=3, patience=1)
    progress = resume(work.dir, task, settings)  # what <out>.partial/state.pt holds, checked, or a fresh start
    progress = run_epochs(task, progress, work, settings, log)

What the loop does, the same for both commands: epochs of steps (the task's optimizer
and its warm-up + cosine schedule, `adamw_with_schedule`, step inside the task's `step`), a progress bar per epoch (`longdoc.runtime.process.progress_bar`), validation after each
epoch, the best epoch by a validation score kept (its `trainable_state`; macro-F1 unless the
task monitors another), early stopping after `patience` epochs without improvement, and at
the end the best state loaded back. A training loss or validation score that is NaN or
infinite stops training at once (`Diverged`): nothing is saved and the work folder goes,
since a resumed run would diverge again. Running out of memory in an epoch is one line
naming the epoch and the task's `memory_hint`.
What differs between the commands is passed in as a `TrainingTask`: the batches of an
epoch, a step's loss, how validation scores, the epoch's log line.

Reads and writes `<folder>/state.pt` (the folder is a `longdoc.runtime.workdir.WorkDir`, so
settings are checked and one process works in it): after each epoch and, with
`checkpoint_steps`, inside one; `longdoc.training.state` says what it holds and how a state
read back is proven this run's. The optimizer and schedule of both tasks are built here,
once (`adamw_with_schedule`).
`plot_curve` draws a finished history (loss and validation accuracy per epoch) to a PNG.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from longdoc.reports.metrics import save_figure
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import memory_step, progress_bar
from longdoc.runtime.workdir import WorkDir
from longdoc.training.state import STATE_FILE, TrainingProgress, resume  # noqa: F401 (resume: the loop's entry)


class TrainingTask(Protocol):
    """What the loop needs from a command; `finetune` and `train-head` each have one."""

    optimizer: torch.optim.AdamW | None  # None: nothing is trained by steps (a single scoring pass)
    schedule: torch.optim.lr_scheduler.LambdaLR | None  # stepped once by every `step`
    score_names: tuple[str, ...]  # the keys of what `validate` returns
    memory_hint: str  # the settings that bound a step's memory, for the out-of-memory line

    def start_epoch(self, epoch: int) -> list:
        """Put the model in training mode; return the epoch's batches, all of them (a
        resumed epoch skips those done, so they must be the same on every call)."""

    def step(self, batch) -> tuple[float, int]:
        """One optimizer step on `batch` (and one schedule step); (mean loss, number of examples)."""

    def validate(self, epoch: int, train_loss: float) -> dict:
        """Validation scores of the model now, the loop's `monitor` among them (it picks the best epoch)."""

    def describe(self, entry: dict) -> str:
        """The log line of a finished epoch (its history entry)."""

    def trainable_state(self) -> dict:
        """A copy of what training changes, by name: the best epoch's is kept, and checkpoints hold it."""

    def load_trainable_state(self, state: dict): ...

    def state(self) -> dict:
        """Anything else a resumed run needs (plain data: random generators' states)."""

    def load_state(self, state: dict): ...


@dataclass
class LoopOutcome:
    """What every training command's summary says of its loop (its JSON fields too)."""

    best_epoch: int
    epochs_run: int
    val_accuracy: float
    val_macro_f1: float
    seconds: float
    peak_memory_bytes: int

    def outcome(self, n_val: int) -> str:
        return (f"best epoch {self.best_epoch}/{self.epochs_run}, validation accuracy {self.val_accuracy:.4f}, "
                f"macro-F1 {self.val_macro_f1:.4f} ({n_val:,} documents)")


@dataclass
class LoopSettings:
    max_epochs: int
    patience: int  # stop after this many epochs without a better monitored score
    # The validation score that picks the best epoch and stops early, and whether lower is better.
    monitor: str = "val_macro_f1"
    minimize: bool = False
    first_epoch: int = 1  # 0 (with max_epochs 0): one scoring pass without steps
    checkpoint_steps: int | None = None  # also save every this many steps inside an epoch; None: at epoch ends
    timed: bool = False  # history entries hold each epoch's training seconds (else they depend on the seed only)
    progress: bool | None = None  # the bar: None shows it on a terminal only
    unit: str = "step"
    leave_bar: bool = True
    # False on every torchrun rank but 0: the replicas are equal, so rank 0 alone writes the
    # state (and discards the work folder on divergence); the others only read it to resume.
    saves: bool = True


class Diverged(UserError):
    """The training loss or a validation score became NaN or infinite: nothing is saved, the
    work folder goes too (a resumed run would diverge again)."""


def run_epochs(task: TrainingTask, progress: TrainingProgress, work: WorkDir, settings: LoopSettings,
               log) -> TrainingProgress:
    """Train from `progress` until `max_epochs` or early stopping, saving to `work`'s folder;
    then load the best epoch's state into the task. Returns the final progress."""
    folder = work.dir
    resumed = progress.resumed
    while progress.epoch <= settings.max_epochs and not progress.stopped:
        epoch = progress.epoch
        batches = task.start_epoch(epoch)
        if resumed:
            if progress.step_in_epoch and progress.step_in_epoch >= len(batches):
                raise UserError(f"{folder / STATE_FILE} is not a checkpoint of this run (progress.step_in_epoch: "
                                f"{progress.step_in_epoch} beyond epoch {epoch}'s {len(batches)} steps); pass "
                                f"--overwrite to start again")
            log(f"resuming from {folder} at epoch {epoch}, step {progress.step_in_epoch:,} of {len(batches):,}")
            resumed = False
        started = time.perf_counter()
        with memory_step(f"training epoch {epoch}", task.memory_hint), progress_bar(
                len(batches), settings.progress, f"epoch {epoch}", unit=settings.unit,
                initial=progress.step_in_epoch, leave=settings.leave_bar) as bar:
            for step in range(progress.step_in_epoch, len(batches)):
                loss, examples = task.step(batches[step])
                if not math.isfinite(loss):
                    raise _diverged(work, settings,
                                    f"training diverged at epoch {epoch}, step {step + 1} (loss {loss})")
                progress.record_step(loss, examples)
                bar.update(1)
                bar.set_postfix(loss=f"{progress.epoch_loss():.4f}", refresh=False)
                every = settings.checkpoint_steps
                if every and progress.step_in_epoch % every == 0 and progress.step_in_epoch < len(batches):
                    progress.epoch_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    _save(progress, task, folder, settings)
        progress.epoch_seconds += time.perf_counter() - started
        with memory_step(f"validating after epoch {epoch}", task.memory_hint):
            scores = task.validate(epoch, progress.epoch_loss())
        if sorted(scores) != sorted(task.score_names):  # a bug: the history's entries are checked by these names
            raise RuntimeError(f"validate returned {sorted(scores)}, not the task's score_names {task.score_names}")
        broken = [name for name in task.score_names if not math.isfinite(scores[name])]
        if broken:
            raise _diverged(work, settings,
                            f"training diverged at epoch {epoch} (validation {broken[0]} {scores[broken[0]]})")
        improved = progress.end_epoch(scores, task, settings)
        log(task.describe(progress.history[-1]) + ("  *" if improved else ""))
        _save(progress, task, folder, settings)
    task.load_trainable_state(progress.best_state)
    return progress


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up to 1, then cosine decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def adamw_with_schedule(parameters, lr: float, weight_decay: float, total_steps: int, warmup_fraction: float,
                        **implementation) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `parameters` (a list, or parameter groups each with its own `lr`) and its
    schedule: linear warm-up over `warmup_fraction` of `total_steps` (at least one step), then
    cosine decay to 0 at `total_steps`; the schedule is stepped once per optimizer step.
    `implementation`: AdamW's own `fused` or `foreach` switch, when given."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, **implementation)
    warmup = max(1, int(warmup_fraction * total_steps))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup))


def _diverged(work: WorkDir, settings: LoopSettings, what: str) -> Diverged:
    if settings.saves:
        work.discard()  # resuming would diverge again
    return Diverged(f"{what}; nothing saved; lower --lr")


def _save(progress: TrainingProgress, task: TrainingTask, folder: Path, settings: LoopSettings):
    if settings.saves:
        progress.task_state = task.state()
        progress.save(folder, task)


def best_entry(progress: TrainingProgress) -> dict:
    return next(h for h in progress.history if h["epoch"] == progress.best_epoch)


def plot_curve(history: list[dict], best_epoch: int, path: Path, val_loss: str = "val_loss"):
    """Training and validation loss (left axis) and validation accuracy (right) per epoch;
    `val_loss` names the history's validation loss (finetune's is `val_window_loss`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax.plot(epochs, [h[val_loss] for h in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    right = ax.twinx()
    right.plot(epochs, [h["val_accuracy"] for h in history], color="tab:green", label="validation accuracy")
    right.set_ylabel("accuracy")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
