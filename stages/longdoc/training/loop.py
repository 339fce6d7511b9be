"""The one training loop of `finetune` and `train-head`: epochs, early stopping, resume.

    task = ...                                   # a TrainingTask: how a step and validation go
    progress = TrainingProgress.load(work.dir, task, task.optimizer, task.schedule)
    progress = run_epochs(task, progress, work.dir, LoopSettings(max_epochs=3, patience=1), log)

What the loop does, the same for both commands: epochs of steps (the task's optimizer
and its warm-up + cosine schedule, `longdoc.training.split.lr_lambda`, step inside the task's
`step`), a progress bar per epoch (`longdoc.runtime.process.progress_bar`), validation after each
epoch, the best epoch by a validation score kept (its `trainable_state`; macro-F1 unless the
task monitors another), early stopping after `patience` epochs without improvement, and at
the end the best state loaded back.
What differs between the commands is passed in as a `TrainingTask`: the batches of an
epoch, a step's loss, how validation scores, the epoch's log line.

Reads and writes `<folder>/state.pt` (the folder is a `longdoc.runtime.workdir.WorkDir`, so
settings are checked and one process works in it): after each epoch and, with
`checkpoint_steps`, inside one, the task's trainable weights, optimizer, schedule,
torch's random state, the task's own state (e.g. a numpy Generator's) and the progress
below, written by `atomic_path` and read back with `torch.load(weights_only=True)`. A
run started again from it takes the same steps as one never stopped. `plot_curve` draws
a finished history (loss and validation accuracy per epoch) to a PNG.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from longdoc.reports.metrics import save_figure
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import progress_bar
from longdoc.runtime.workdir import WriteGuard, atomic_path

STATE_FILE = "state.pt"


class TrainingTask(Protocol):
    """What the loop needs from a command; `finetune` and `train-head` each have one."""

    optimizer: torch.optim.Optimizer | None  # None: nothing is trained by steps (a single scoring pass)
    schedule: torch.optim.lr_scheduler.LRScheduler | None

    def start_epoch(self, epoch: int) -> list:
        """Put the model in training mode; return the epoch's batches, all of them (a
        resumed epoch skips those done, so they must be the same on every call)."""

    def step(self, batch) -> tuple[float, int]:
        """One optimizer step on `batch`; (mean loss, number of examples)."""

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


@dataclass
class TrainingProgress:
    """Where training stands; saved to `<folder>/state.pt` to resume from."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    windows_seen: int = 0  # examples of this epoch so far (windows for finetune, documents for train-head)
    epoch_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")  # the monitored score, negated where lower is better
    best_state: dict | None = None
    stale_epochs: int = 0
    stopped: bool = False
    task_state: dict = field(default_factory=dict)

    @property
    def resumed(self) -> bool:
        return bool(self.global_step or self.history)

    def record_step(self, loss: float, examples: int):
        self.step_in_epoch += 1
        self.global_step += 1
        self.loss_sum += loss * examples
        self.windows_seen += examples

    def epoch_loss(self) -> float:
        return self.loss_sum / max(1, self.windows_seen)

    def end_epoch(self, scores: dict, task, settings: LoopSettings) -> bool:
        """Record the epoch; keep the task's state when the monitored score improved."""
        entry = {"epoch": self.epoch, "train_loss": self.epoch_loss()}
        if settings.timed:
            entry["seconds"] = self.epoch_seconds
        self.history.append({**entry, **scores})
        score = -scores[settings.monitor] if settings.minimize else scores[settings.monitor]
        improved = score > self.best_score + 1e-6
        if improved:
            self.best_epoch, self.best_score, self.stale_epochs = self.epoch, score, 0
            self.best_state = task.trainable_state()
        else:
            self.stale_epochs += 1
        self.stopped = self.stale_epochs >= settings.patience
        self.epoch += 1
        self.step_in_epoch, self.loss_sum, self.windows_seen, self.epoch_seconds = 0, 0.0, 0, 0.0
        return improved

    def save(self, folder: Path, model, optimizer, schedule):
        """`model`: anything with `trainable_state()` (a WindowModel, a TrainingTask)."""
        state = {"progress": dict(self.__dict__), "weights": model.trainable_state(),
                 "optimizer": None if optimizer is None else optimizer.state_dict(),
                 "schedule": None if schedule is None else schedule.state_dict(), "torch_rng": torch.get_rng_state()}
        path = folder / STATE_FILE
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            # torch's writer turns a failed write into an opaque RuntimeError; the guard keeps
            # the OSError (disk full, file too large), which atomic_path reports in one line.
            guard = WriteGuard(file)
            try:
                torch.save(state, guard)
            except RuntimeError as error:
                raise guard.error or UserError(f"cannot write {path}: {first_line(error)}") from None
            if guard.error is not None:
                raise guard.error

    @classmethod
    def load(cls, folder: Path, model, optimizer, schedule, **fresh) -> TrainingProgress:
        """The saved progress, its weights, optimizer, schedule and torch random state
        restored; without a saved state, `cls(**fresh)`."""
        path = folder / STATE_FILE
        if not path.exists():
            return cls(**fresh)
        try:
            # weights_only: tensors and plain containers only, so a file planted in a work
            # folder cannot run code; the state `save` writes is exactly that.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is refused in one line
            raise UserError(f"{path} cannot be read as a checkpoint ({type(error).__name__}: "
                            f"{first_line(error)[:120]}); pass --overwrite to start again") from None
        try:
            model.load_trainable_state(state["weights"])
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
            if schedule is not None:
                schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"])
            return cls(**state["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            raise UserError(f"{path} is not a checkpoint of this run ({type(error).__name__}: "
                            f"{first_line(error)[:120]}); pass --overwrite to start again") from None


def resume(folder: Path, task: TrainingTask, settings: LoopSettings) -> TrainingProgress:
    """The progress saved in `folder` with the task restored to it, or a fresh start."""
    progress = TrainingProgress.load(folder, task, task.optimizer, task.schedule, epoch=settings.first_epoch)
    try:
        task.load_state(progress.task_state)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{folder / STATE_FILE} is not a checkpoint of this run ({type(error).__name__}: "
                        f"{first_line(error)[:120]}); pass --overwrite to start again") from None
    return progress


def run_epochs(task: TrainingTask, progress: TrainingProgress, folder: Path, settings: LoopSettings,
               log) -> TrainingProgress:
    """Train from `progress` until `max_epochs` or early stopping, saving to `folder`;
    then load the best epoch's state into the task. Returns the final progress."""
    resumed = progress.resumed
    while progress.epoch <= settings.max_epochs and not progress.stopped:
        epoch = progress.epoch
        batches = task.start_epoch(epoch)
        if resumed:
            log(f"resuming from {folder} at epoch {epoch}, step {progress.step_in_epoch:,} of {len(batches):,}")
            resumed = False
        started = time.perf_counter()
        with progress_bar(len(batches), settings.progress, f"epoch {epoch}", unit=settings.unit,
                          initial=progress.step_in_epoch, leave=settings.leave_bar) as bar:
            for step in range(progress.step_in_epoch, len(batches)):
                loss, examples = task.step(batches[step])
                progress.record_step(loss, examples)
                bar.update(1)
                bar.set_postfix(loss=f"{progress.epoch_loss():.4f}", refresh=False)
                every = settings.checkpoint_steps
                if every and progress.step_in_epoch % every == 0 and progress.step_in_epoch < len(batches):
                    progress.epoch_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    _save(progress, task, folder)
        progress.epoch_seconds += time.perf_counter() - started
        scores = task.validate(epoch, progress.epoch_loss())
        improved = progress.end_epoch(scores, task, settings)
        log(task.describe(progress.history[-1]) + ("  *" if improved else ""))
        _save(progress, task, folder)
    task.load_trainable_state(progress.best_state)
    return progress


def _save(progress: TrainingProgress, task: TrainingTask, folder: Path):
    progress.task_state = task.state()
    progress.save(folder, task, task.optimizer, task.schedule)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
