"""Where training stands, saved after each epoch to `<folder>/state.pt`, and the proof that
a saved state is one this run could have written.

`TrainingProgress` is the loop's record (epoch, step, the history, the best epoch and its
weights); `save` writes it with the task's trainable weights, optimizer, schedule, torch's
random state and the task's own state through `atomic_path`, and `load` reads it back by
`longdoc.runtime.workdir.load_torch_file` (CRC-checked, `weights_only`). A run started again
from it takes the same steps as one never stopped. What is read is checked against this run
before any of it is used (`check_state`): every field of the progress present and of its
type, the history consistent with the best epoch, stale count and stop it records
(replayed), the weights' and the best state's names, shapes and dtypes the task's, the
optimizer's and schedule's states those of this task's optimizer and schedule after
`global_step` steps. Anything else is refused in one line. Not told apart from this run's:
finite values changed in the weights, the optimizer's moments, the loss sum or the random
generators' states.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import WriteGuard, atomic_path, brief, first_line, load_torch_file, tensor_problem

if TYPE_CHECKING:
    from longdoc.training.loop import LoopSettings, TrainingTask

STATE_FILE = "state.pt"

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
        improved = self.judge(self.history[-1], settings)
        if improved:
            self.best_state = task.trainable_state()
        self.epoch += 1
        self.step_in_epoch, self.loss_sum, self.windows_seen, self.epoch_seconds = 0, 0.0, 0, 0.0
        return improved

    def judge(self, entry: dict, settings: LoopSettings) -> bool:
        """Take `entry`'s epoch as the best if its monitored score improves on the best so far,
        else count it stale; stop after `patience` stale epochs. True when it improved."""
        score = -entry[settings.monitor] if settings.minimize else entry[settings.monitor]
        improved = score > self.best_score + 1e-6
        if improved:
            self.best_epoch, self.best_score, self.stale_epochs = entry["epoch"], score, 0
        else:
            self.stale_epochs += 1
        self.stopped = self.stale_epochs >= settings.patience
        return improved

    def save(self, folder: Path, task: TrainingTask):
        optimizer, schedule = task.optimizer, task.schedule
        state = {"progress": dict(self.__dict__), "weights": task.trainable_state(),
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
    def load(cls, folder: Path, task: TrainingTask, settings: LoopSettings,
             replace_unusable: bool = False) -> TrainingProgress:
        """The progress saved in `folder`, checked against this run (`check_state`), with the
        task's weights, optimizer, schedule, own state and torch's random state restored;
        without a saved state, a fresh start. A state that is not this run's is refused in one
        line, or with `replace_unusable` (train-head's --overwrite) deleted for a fresh start."""
        path = folder / STATE_FILE
        if not path.exists():
            return cls(epoch=settings.first_epoch)
        try:
            # CRC-checked and weights_only: tensors and plain containers only, so a file
            # planted in a work folder cannot run code; the state `save` writes is exactly that.
            state = load_torch_file(path)
        except ValueError as error:
            if replace_unusable:
                return cls._fresh(path, settings)
            raise UserError(f"{path} cannot be read as a checkpoint ({error}); pass --overwrite to start "
                            f"again") from None
        try:
            check_state(state, task, settings)
            task.load_state(state["progress"]["task_state"])  # raises before changing anything, or not at all
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as error:
            if replace_unusable:
                return cls._fresh(path, settings)
            problem = str(error) if isinstance(error, StateMismatch) else f"{type(error).__name__}: {first_line(error)}"
            raise UserError(f"{path} is not a checkpoint of this run ({problem[:200]}); pass --overwrite to start "
                            f"again") from None
        # Checked above, so nothing below can fail half-way.
        task.load_trainable_state(state["weights"])
        if task.optimizer is not None:
            task.optimizer.load_state_dict(state["optimizer"])
        if task.schedule is not None:
            task.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        return cls(**state["progress"])

    @classmethod
    def _fresh(cls, path: Path, settings: LoopSettings) -> TrainingProgress:
        path.unlink(missing_ok=True)
        return cls(epoch=settings.first_epoch)


class StateMismatch(ValueError):
    """What makes a `state.pt` not a checkpoint of this run, in a few words naming the field."""


STATE_KEYS = ("progress", "weights", "optimizer", "schedule", "torch_rng")
# TrainingProgress's fields as a state.pt must hold them (exact types: True is no epoch).
PROGRESS_TYPES = {"int": (int,), "float": (float,), "bool": (bool,), "list[dict]": (list,), "dict": (dict,),
                  "dict | None": (dict, type(None))}
# What AdamW keeps per parameter (with amsgrad, also max_exp_avg_sq).
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")
# What a schedule's state holds that moves with its steps; the rest is fixed by the settings.
SCHEDULE_COUNTERS = ("last_epoch", "_step_count", "_last_lr")


def check_state(state, task: TrainingTask, settings: LoopSettings):
    """Raise StateMismatch unless `state` (as `TrainingProgress.save` writes it) is one this
    run could have saved: each field present and of its type; the history one entry per
    finished epoch, each with the task's scores, all finite, its replay (`judge`) giving the
    recorded best epoch, best score, stale count and stop; a step inside an epoch only where
    this run saves there; the weights and best state of the task's names, shapes and dtypes;
    the optimizer's and schedule's states this run's after `global_step` steps (fixed
    settings equal, learning rates the schedule's); torch's random state one torch takes;
    the task's own state of the keys and types it writes."""
    if not isinstance(state, dict) or _names(state) != sorted(STATE_KEYS):
        raise StateMismatch(f"not a record of {', '.join(STATE_KEYS)}")
    progress = state["progress"]
    if not isinstance(progress, dict):
        raise StateMismatch(f"progress: {brief(progress)}, not a record")
    types = {f.name: PROGRESS_TYPES[f.type] for f in dataclasses.fields(TrainingProgress)}
    for name in [*types, *progress]:
        if name not in progress or name not in types:
            shown = name if isinstance(name, str) and len(name) <= 40 else brief(name)
            raise StateMismatch(f"progress.{shown}: {'missing' if name in types else 'not a field of the progress'}")
        if type(progress[name]) not in types[name]:
            raise StateMismatch(f"progress.{name}: {brief(progress[name])}, not of its type")
    _check_history(progress, task, settings)
    reference = task.trainable_state()
    _check_tensors("weights", state["weights"], reference)
    if progress["best_state"] is not None:
        _check_tensors("progress.best_state", progress["best_state"], reference)
    _check_optimizer(state["optimizer"], task.optimizer, progress["global_step"])
    _check_schedule(state["schedule"], task.schedule, state["optimizer"], progress["global_step"])
    problem = tensor_problem(state["torch_rng"], tuple(torch.get_rng_state().shape), torch.uint8)
    if problem:
        raise StateMismatch(f"torch_rng: {problem}")
    current = torch.get_rng_state()
    try:
        torch.set_rng_state(state["torch_rng"])  # a trial: torch checks the generator's state itself
    except RuntimeError as error:
        raise StateMismatch(f"torch_rng: {first_line(error)[:80]}") from None
    finally:
        torch.set_rng_state(current)
    own, saved = task.state(), progress["task_state"]
    if _names(saved) != sorted(own) or any(type(saved[k]) is not type(own[k]) for k in own):
        raise StateMismatch(f"progress.task_state: not the state this task keeps ({', '.join(own) or 'none'})")


def _check_history(progress: dict, task: TrainingTask, settings: LoopSettings):
    """The history against the epoch it says training stands at, and the best epoch, best
    score, stale count and stop its replay gives; a step inside an epoch only where this run
    saves, with its counts."""
    history, first = progress["history"], settings.first_epoch
    names = {"epoch", "train_loss", *(("seconds",) if settings.timed else ()), *task.score_names}
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or set(entry) != names:
            raise StateMismatch(f"history[{i}]: not an epoch's record of {', '.join(sorted(names))}")
        if type(entry["epoch"]) is not int or entry["epoch"] != first + i:
            raise StateMismatch(f"history[{i}].epoch: {brief(entry['epoch'])} where epoch {first + i} belongs")
        for key in sorted(names - {"epoch"}):
            if type(entry[key]) not in (int, float) or not math.isfinite(entry[key]):
                raise StateMismatch(f"history[{i}].{key}: {brief(entry[key])} is not a finite number")
    if progress["epoch"] != first + len(history):
        raise StateMismatch(f"progress.epoch: {progress['epoch']} after {len(history)} finished epochs from "
                            f"epoch {first}")
    if len(history) > settings.max_epochs - first + 1:
        raise StateMismatch(f"history: {len(history)} epochs, more than this run's {settings.max_epochs}")
    replay = TrainingProgress(epoch=first)
    for entry in history:
        if replay.stopped:
            raise StateMismatch(f"history: epoch {entry['epoch']} after training stopped early")
        replay.judge(entry, settings)
    for name in ("best_epoch", "best_score", "stale_epochs", "stopped"):
        if progress[name] != getattr(replay, name):
            raise StateMismatch(f"progress.{name}: {brief(progress[name])} where its history gives "
                                f"{getattr(replay, name)!r}")
    if (progress["best_state"] is None) != (not history):
        raise StateMismatch("progress.best_state: " + ("missing after finished epochs" if history
                                                       else "present before any epoch finished"))
    step, every, finished = progress["step_in_epoch"], settings.checkpoint_steps, progress["stopped"] or (
        progress["epoch"] > settings.max_epochs)
    if step < 0 or (step and (not every or step % every or finished)):
        raise StateMismatch(f"progress.step_in_epoch: {step} is no step this run saves at")
    counts = (progress["loss_sum"], progress["windows_seen"], progress["epoch_seconds"])
    if step == 0 and counts != (0.0, 0, 0.0):
        raise StateMismatch("progress: a loss sum, examples or seconds counted before the epoch's first step")
    if step and not (progress["windows_seen"] >= step and math.isfinite(progress["loss_sum"])
                     and math.isfinite(progress["epoch_seconds"]) and progress["epoch_seconds"] >= 0):
        raise StateMismatch(f"progress: the loss sum, examples or seconds of {step} steps are not a count")
    if progress["global_step"] < step or (task.optimizer is None and progress["global_step"]):
        raise StateMismatch(f"progress.global_step: {progress['global_step']} is no step this run reaches")


def _check_tensors(name: str, saved, reference: dict):
    """`saved` has exactly the names of `reference`, each a tensor of its shape and dtype."""
    if not isinstance(saved, dict) or _names(saved) != sorted(reference):
        raise StateMismatch(f"{name}: not the weights this task trains")
    for key, want in reference.items():
        problem = tensor_problem(saved[key], tuple(want.shape), want.dtype)
        if problem:
            raise StateMismatch(f"{name}.{key}: {problem}")


def _check_optimizer(saved, optimizer, global_step: int):
    """This optimizer's settings per parameter group (all but the learning rate, which the
    schedule decides), and for every parameter AdamW's moments of its shape and one step
    count, the same for all, up to `global_step`."""
    if optimizer is None or saved is None:
        if (optimizer is None) != (saved is None):
            raise StateMismatch("optimizer: " + ("a state where this run has no optimizer" if optimizer is None
                                                 else "missing"))
        return
    current = optimizer.state_dict()
    if not isinstance(saved, dict) or _names(saved) != sorted(current) or not isinstance(saved["param_groups"], list) \
            or len(saved["param_groups"]) != len(current["param_groups"]) or not isinstance(saved["state"], dict):
        raise StateMismatch("optimizer: not the state of this run's optimizer")
    for i, (group, want) in enumerate(zip(saved["param_groups"], current["param_groups"])):
        if not isinstance(group, dict) or _names(group) != sorted(want):
            raise StateMismatch(f"optimizer.param_groups[{i}]: not this optimizer's settings")
        for key in want:
            if key != "lr" and not same_plain(group[key], want[key]):
                raise StateMismatch(f"optimizer.param_groups[{i}].{key}: {brief(group[key])} where this run has "
                                    f"{brief(want[key])}")
    parameters = dict(zip((i for g in current["param_groups"] for i in g["params"]),
                          (p for g in optimizer.param_groups for p in g["params"])))
    groups = {i: g for g in current["param_groups"] for i in g["params"]}
    entries = saved["state"]
    # Every trained parameter has a gradient at every step, so AdamW keeps moments for all of
    # them from the first step on, each stepped as often.
    if not all(type(index) is int for index in entries) or set(entries) != (set(parameters) if global_step else set()):
        raise StateMismatch(f"optimizer.state: moments of {len(entries)} of {len(parameters)} parameters after "
                            f"{global_step} steps")
    steps = set()
    for index, entry in entries.items():
        want = ADAM_STATE + (("max_exp_avg_sq",) if groups[index].get("amsgrad") else ())
        if not isinstance(entry, dict) or _names(entry) != sorted(want):
            raise StateMismatch(f"optimizer.state[{index}]: not AdamW's {', '.join(want)}")
        # torch.optim's count: float32, or float64 where that is the default dtype (never when fused)
        count = torch.float64 if torch.get_default_dtype() == torch.float64 and not groups[index].get("fused") \
            else torch.float32
        for key in want:
            shape, dtype = ((), count) if key == "step" else (tuple(parameters[index].shape), parameters[index].dtype)
            problem = tensor_problem(entry[key], shape, dtype)
            if key == "step" and not problem and not 0 < float(entry[key]) <= global_step:
                problem = f"{float(entry[key])} steps, not 1 to {global_step}"
            if problem:
                raise StateMismatch(f"optimizer.state[{index}].{key}: {problem}")
        steps.add(float(entry["step"]))
    if len(steps) > 1:
        raise StateMismatch(f"optimizer.state: parameters stepped {min(steps):.0f} to {max(steps):.0f} times")


def _check_schedule(saved, schedule, saved_optimizer, global_step: int):
    """This schedule's fixed settings, its counters `global_step` steps on, and the learning
    rates it gives there, in its state and in the optimizer's."""
    if schedule is None or saved is None:
        if (schedule is None) != (saved is None):
            raise StateMismatch("schedule: " + ("a state where this run has no schedule" if schedule is None
                                                else "missing"))
        return
    current = schedule.state_dict()
    if not isinstance(saved, dict) or _names(saved) != sorted(current):
        raise StateMismatch("schedule: not the state of this run's schedule")
    for key in current:
        if key not in SCHEDULE_COUNTERS and not same_plain(saved[key], current[key]):
            raise StateMismatch(f"schedule.{key}: {brief(saved[key])} where this run has {brief(current[key])}")
    for key in ("last_epoch", "_step_count"):
        if not same_plain(saved[key], current[key] + global_step):
            raise StateMismatch(f"schedule.{key}: {brief(saved[key])} after {global_step} steps")
    rates = [base * rate(current["last_epoch"] + global_step) for rate, base in zip(schedule.lr_lambdas,
                                                                                     schedule.base_lrs)]
    given = [group["lr"] for group in saved_optimizer["param_groups"]] if saved_optimizer is not None else rates
    if not same_plain(saved["_last_lr"], rates) or not same_plain(given, rates):
        raise StateMismatch(f"schedule: learning rates other than the schedule's {rates[0]:.3g} at step {global_step}")


def _names(record: dict) -> list:
    """The keys of a record read from a file, sorted; a key that is not a string never matches."""
    return sorted(key if isinstance(key, str) else f"\0{type(key).__name__}" for key in record)


def same_plain(a, b) -> bool:
    """`a == b` for plain values read from a file (numbers, strings, None, tuples, lists and
    dicts of them), of the same types; never a tensor's elementwise comparison."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_plain(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return _names(a) == _names(b) and all(same_plain(a[k], b[k]) for k in a)
    if isinstance(a, (int, float, str, bool, type(None))):
        return a == b
    return False


def resume(folder: Path, task: TrainingTask, settings: LoopSettings, replace_unusable: bool = False
           ) -> TrainingProgress:
    """The progress saved in `folder` with the task restored to it, or a fresh start
    (`TrainingProgress.load`)."""
    return TrainingProgress.load(folder, task, settings, replace_unusable)
