"""Optional stage before stage one: fine-tune the encoder's top layers on windows.

    python cli.py finetune --data 20newsgroups --out runs/finetuned --unfreeze-top 2
    python cli.py embed --model runs/finetuned ...      # then train-head, evaluate

Reads a labelled corpus (`longdoc.corpus.sources`) and an encoder (`longdoc.encoding.encoder`). Every
window (`longdoc.encoding.windows`, the same geometry stage one uses) is labelled with its
document's class; the top `--unfreeze-top` layers and a linear window classifier
train on them (`longdoc.training.window_model`), everything below stays frozen. A
multi-label corpus (label sets) trains every window on its document's label set, one
logit per label, with train-head's loss for label sets: binary cross-entropy, each
label's positives weighed by negatives / positives (at most 100) unless
`--no-class-weights`, validated on an iterative split (`longdoc.training.window_task`).

Writes `--out`, a Hugging Face model folder (config, weights, tokenizer) that
`AutoModel.from_pretrained(out)` and `embed --model out` load as is, plus
`finetune.json`: the settings, the base model and its fingerprint, the fine-tuned
fingerprint, the window vector trained (cls or mean), validation scores per epoch.
`embed` copies that lineage into caches. On the generic path the folder also holds
`1_Pooling/config.json`, so `embed --window-vector auto` pools as it was trained.
Inside the folder too (so it is published with the model, atomically): `curve.png`,
training and validation window loss and document accuracy per epoch.

How it stays small and resumable (the pieces: `longdoc.training.window_task`; the loop
shared with `train-head`: `longdoc.training.loop`):
* batches are packed to a token budget, so memory is bounded by `batch_tokens`
  (and `unfreeze_top`), never by a document's length;
* the frozen bottom's features of each window are computed once and kept in memory
  up to `feature_cache_gb`; later epochs run only the top layers (BERT layout; on
  the generic path the whole encoder runs every step, the bottom without gradients);
* validation is a seeded, stratified split of *documents*, so no document has
  windows on both sides; the score is document-level macro-F1 from the mean of
  its windows' probabilities (label sets: iterative stratification, macro-F1 of the
  labels predicted at probability 0.5); the best epoch is kept, early stopping after
  `patience` epochs without improvement;
* every `checkpoint_steps` steps and at each epoch's end, the trainable weights,
  optimizer, schedule, random state and history go to `<out>.partial/` (atomically);
  a killed run continues from there. `--out` appears only once training is done.

Supported: BERT-layout encoders (BERT, RoBERTa, MiniLM, ELECTRA, ...) on the fast
path above, trained on [CLS]; any other encoder whose layers form a list (DistilBERT,
MPNet, DeBERTa, ModernBERT, ...) on the generic path, pooled as it was trained
(`longdoc.training.window_model`). Not supported: encoders without a layer list (one-line
error); training the embedding tables.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import longdoc
from longdoc.configs import FinetuneConfig
from longdoc.corpus.sources import NEWSGROUPS, Corpus, load_corpus
from longdoc.encoding.encoder import (
    LINEAGE_FILE,
    Encoder,
    fingerprint_model,
    load_encoder,
)
from longdoc.encoding.windows import tokenize
from longdoc.runtime.errors import ReportedElsewhere, UserError
from longdoc.runtime.process import peak_memory_bytes
from longdoc.runtime.ranks import Group, Ranks, failure_line, same_as_rank_zero, shared_folder, start
from longdoc.runtime.workdir import WorkDir, atomic_path, check_not_an_input, first_line
from longdoc.settings.model import check_window_fits
from longdoc.training.data_parallel import WindowShare
from longdoc.training.loop import (
    Diverged,
    LoopOutcome,
    LoopSettings,
    best_entry,
    plot_curve,
    resume,
    run_epochs,
)
from longdoc.training.split import validation_split
from longdoc.training.state import TrainingProgress
from longdoc.training.window_model import WindowClassifier, encoder_depth, parse_unfreeze_top
from longdoc.training.window_task import WindowTask

CURVE_FILE = "curve.png"  # inside --out, beside finetune.json


@dataclass
class FinetuneSummary(LoopOutcome):
    out: Path
    unfreeze_top: int
    trainable_parameters: int
    n_train_docs: int
    n_val_docs: int
    n_train_windows: int
    resumed_from_step: int = 0
    ranks: int = 1  # processes of the torchrun job (1: one process)
    task: str = "single_label"  # or "multi_label" (label sets; TASKS in longdoc.settings.model)
    val_micro_f1: float | None = None  # label sets only

    def line(self) -> str:
        resumed = f" (resumed at step {self.resumed_from_step:,})" if self.resumed_from_step else ""
        on = f" on {self.ranks} ranks" if self.ranks > 1 else ""
        return (f"fine-tuned the top {self.unfreeze_top} layers ({self.trainable_parameters:,} trainable "
                f"parameters) on {self.n_train_windows:,} windows of {self.n_train_docs:,} documents{on}{resumed}: "
                f"{self._scores()}; {self.seconds:,.1f} s, "
                f"peak memory {self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")

    def _scores(self) -> str:
        if self.task != "multi_label":
            return self.outcome(self.n_val_docs)
        return (f"label sets, best epoch {self.best_epoch}/{self.epochs_run}, validation at 0.5: micro-F1 "
                f"{self.val_micro_f1:.4f}, macro-F1 {self.val_macro_f1:.4f}, subset accuracy "
                f"{self.val_accuracy:.4f} ({self.n_val_docs:,} documents)")


# --- the run ---------------------------------------------------------------------


def _settings(config: FinetuneConfig, base_fingerprint: str, data_fingerprint: str, k: int, ranks: int,
              weighted: bool | None = None) -> dict:
    """What a resumed run must share with the interrupted one: the number of ranks too
    (rank r owns the windows r mod N, and a checkpoint's dropout draws are per rank); for
    label sets (`weighted` not None) the task and whether the loss weighs labels."""
    keep = ("data", "split", "model", "chunk_tokens", "stride", "batch_tokens", "max_epochs", "patience", "lr",
            "head_lr", "weight_decay", "warmup_fraction", "dropout", "max_grad_norm", "val_fraction", "val_split",
            "seed", "precision", "categories", "remove", "limit")
    settings = {key: getattr(config, key) for key in keep}
    settings.update(unfreeze_top=k, base_fingerprint=base_fingerprint, data_fingerprint=data_fingerprint,
                    remove=list(config.remove), ranks=ranks)
    if weighted is not None:  # classes keep the settings of before, so their checkpoints still resume
        settings.update(task="multi_label", class_weights=weighted)
    return json.loads(json.dumps(settings))


def check_out_folder(out: Path, overwrite: bool, inputs: dict | None = None):
    check_not_an_input(out, inputs or {})
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it (only once the new model is saved), "
                        f"or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; fine-tuning writes a model folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create {out.parent}: {error.strerror}") from None


@dataclass
class FinetuneInputs:
    """What a fine-tuning run trains on, checked: the corpus, the encoder, how many of its
    layers train, and the seeded, stratified split of documents."""

    corpus: Corpus
    labels: np.ndarray  # a class per document, or (label sets) a bool matrix [documents, labels]
    encoder: Encoder
    unfreeze_top: int
    train_docs: np.ndarray
    val_docs: np.ndarray
    weighted: bool = False  # label sets: BCE's pos_weight per label (--class-weights)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def task(self, config: FinetuneConfig, share: WindowShare | None = None) -> WindowTask:
        """The training task `run` runs (and bench/ times): every window labelled
        with its document's class (or label set), the model initialised from `config.seed`;
        under torchrun, this rank's `share` of each batch."""
        return WindowTask.build(self.encoder, tokenize(self.encoder.tokenizer, self.corpus.texts), self.labels,
                                len(self.corpus.label_names), self.unfreeze_top, self.train_docs, self.val_docs,
                                config, share, weighted=self.weighted)


def load_inputs(config: FinetuneConfig) -> FinetuneInputs:
    """Read the corpus, then load the encoder; each refused in one line when unusable."""
    corpus = load_corpus(config.data, config.split, config.categories, config.remove, config.data_home,
                         config.limit, config.label_sep)
    weighted = False
    if corpus.multi_label:
        labels = corpus.label_matrix()
        if not labels.any():
            raise UserError(f"--data {config.data}: no document has a label; fine-tuning needs labelled documents")
        # train-head's default for label sets (longdoc.configs.TrainConfig.class_weights, chosen on validation)
        weighted = config.class_weights is not False
    else:
        if config.class_weights:
            raise UserError("--class-weights: finetune weighs label sets only (each label's positives); "
                            "a corpus of classes trains unweighted, so leave it out")
        labels = np.asarray(corpus.labels, dtype=np.int64)
        present = np.unique(labels)
        if len(present) < 2:
            only = corpus.label_names[present[0]] if len(present) else "none"
            raise UserError(f"--data {config.data}: every document is of class {only!r}; "
                            f"fine-tuning a classifier needs at least two classes")
    encoder = load_encoder(config.model, config.device, config.precision, window_vector="auto", training=True)
    k = parse_unfreeze_top(config.unfreeze_top, encoder_depth(encoder.model), config.model)
    check_window_fits(config.chunk_tokens, encoder.max_tokens, config.model)
    train_docs, val_docs = validation_split(labels, corpus.doc_ids, config, np.random.default_rng(config.seed))
    if len(val_docs) == 0:
        raise UserError(f"--val-fraction {config.val_fraction} of {len(labels)} documents leaves no "
                        f"validation documents; raise it or add documents")
    return FinetuneInputs(corpus, labels, encoder, k, train_docs, val_docs, weighted)


def run(config: FinetuneConfig, log=None, ranks: Ranks | None = None) -> FinetuneSummary | None:
    """Fine-tune in one process, or under torchrun (`ranks`, several) as one rank of a
    data-parallel run (`longdoc.training.data_parallel`): rank 0 returns the summary,
    every other rank None."""
    started = time.perf_counter()
    log = log or (lambda line: print(line, file=sys.stderr))
    if ranks is None:
        return _train(config, log, started)
    group, threads, _, device_error = start(ranks, config.threads, config.device)
    config = replace(config, threads=threads, progress=config.progress if ranks.rank == 0 else False)
    try:
        return _train(config, log if ranks.rank == 0 else (lambda line: None), started, group, device_error)
    finally:
        group.close()


def _train(config: FinetuneConfig, log, started: float, group: Group | None = None,
           device_error: str | None = None) -> FinetuneSummary | None:
    """The run on one rank (`group`: None in one process). Under torchrun every rank
    checks and loads what one process does, and its settings must equal rank 0's; rank 0
    alone holds the work folder (which must be every rank's: `shared_folder`) and writes
    the checkpoints and the model folder; every rank resumes from the same checkpoint."""
    out = Path(config.out)
    rank, world = (0, 1) if group is None else (group.rank, group.world_size)
    try:
        if device_error:
            raise UserError(device_error)
        check_out_folder(out, config.overwrite, {"--data": config.data if config.data != NEWSGROUPS else None,
                                                 "--model": config.model})
        if config.threads:
            torch.set_num_threads(config.threads)
        inputs = load_inputs(config)
        data_fingerprint = inputs.corpus.fingerprint()  # sha256 over every text: computed once
        settings = _settings(config, inputs.encoder.fingerprint, data_fingerprint, inputs.unfreeze_top, world,
                             inputs.weighted if inputs.multi_label else None)
        mine = {"settings": {**settings, "precision run": inputs.encoder.precision}}  # "auto" resolved here
    except (UserError, OSError) as error:
        if group is None:
            raise
        mine = {"error": str(error)}
    if group is not None:
        group.agree("setup", mine, check=same_as_rank_zero("settings", hint="start every rank with the same options"))
    corpus, encoder, k = inputs.corpus, inputs.encoder, inputs.unfreeze_top
    loop = LoopSettings(max_epochs=config.max_epochs, patience=config.patience,
                        checkpoint_steps=config.checkpoint_steps, timed=True, progress=config.progress,
                        saves=rank == 0)
    work = WorkDir(out, settings, fresh=config.overwrite)
    with ExitStack() as stack:
        task, progress = _resume(config, inputs, work, loop, group, stack)
        resumed_step = progress.global_step
        try:
            progress = run_epochs(task, progress, work, loop, log)
        except Diverged as error:  # every rank sees the same losses and scores: rank 0 says it
            if rank != 0:
                raise ReportedElsewhere(str(error)) from None
            raise
        except Exception as error:
            if group is None:
                raise
            raise failure_line(group, error) from None
        if rank != 0:
            return None
        best = best_entry(progress)
        record = {
            "format": "longdoc-finetune", "package_version": longdoc.__version__,
            "base_model": config.model, "base_fingerprint": encoder.fingerprint,
            "fingerprint": fingerprint_model(encoder.model, encoder.tokenizer),
            "unfreeze_top": k, "window_vector": task.model.window_vector, "label_names": corpus.label_names,
            "data_source": corpus.source,
            "data_fingerprint": data_fingerprint, "n_train_docs": len(inputs.train_docs),
            "n_val_docs": len(inputs.val_docs), "n_train_windows": len(task.train_windows),
            "best_epoch": progress.best_epoch, "val_accuracy": best["val_accuracy"],
            "val_macro_f1": best["val_macro_f1"], "history": progress.history, "ranks": world,
            "task": "multi_label" if inputs.multi_label else "single_label",
            **({"val_micro_f1": best["val_micro_f1"], "class_weights": inputs.weighted} if inputs.multi_label else {}),
            "settings": {key: (str(v) if isinstance(v, Path) else v) for key, v in asdict(config).items()},
        }
        try:
            save_model_folder(out, task.model, encoder.tokenizer, record)
        except (UserError, OSError) as error:
            raise UserError(f"rank 0 failed: {error}" if group is not None else str(error)) from None
        work.discard()
    return FinetuneSummary(
        out=out, unfreeze_top=k, trainable_parameters=task.trainer.trainable_parameters(),
        n_train_docs=len(inputs.train_docs), n_val_docs=len(inputs.val_docs), n_train_windows=len(task.train_windows),
        best_epoch=progress.best_epoch, epochs_run=len(progress.history), val_accuracy=best["val_accuracy"],
        val_macro_f1=best["val_macro_f1"], seconds=time.perf_counter() - started,
        peak_memory_bytes=peak_memory_bytes(encoder.device), resumed_from_step=resumed_step, ranks=world,
        task="multi_label" if inputs.multi_label else "single_label", val_micro_f1=best.get("val_micro_f1"))


def _resume(config: FinetuneConfig, inputs: FinetuneInputs, work: WorkDir, loop: LoopSettings,
            group: Group | None, stack: ExitStack) -> tuple[WindowTask, TrainingProgress]:
    """Enter the work folder (rank 0, or the one process; the lock is held in `stack`),
    build this rank's task, and load the last checkpoint into it (every rank, the same
    file). Under torchrun each step is agreed, so a failure anywhere is one line."""
    if group is None:
        stack.enter_context(work)
        task = inputs.task(config)
        return task, resume(work.dir, task, loop)
    mine = {}
    try:
        if group.rank == 0:
            stack.enter_context(work)
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    group.agree("work folder", mine)
    shared_folder(group, work.dir, "--out's work folder")
    result, mine = None, {}
    try:
        task = inputs.task(config, WindowShare(group.rank, group.world_size))
        result = task, resume(work.dir, task, loop)
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    group.agree("resume", mine)
    return result


def save_model_folder(out: Path, model: WindowClassifier, tokenizer, record: dict):
    """Write the fine-tuned encoder, its tokenizer and `finetune.json` to `out`,
    atomically (`atomic_path`): built in a private folder beside it, every file fsynced,
    then renamed (an old `out` goes only after)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-shard writing bar is noise in a CLI
    with atomic_path(out, folder=True) as tmp:
        try:
            model.save_pretrained(tmp)  # the encoder; on the generic path its pooling too
            tokenizer.save_pretrained(tmp)
        except RuntimeError as error:  # safetensors / torch writers report failed writes so
            raise UserError(f"cannot write {out}: {first_line(error)}") from None
        (tmp / LINEAGE_FILE).write_text(json.dumps(record, indent=1))
        plot_curve(record["history"], record["best_epoch"], tmp / CURVE_FILE, val_loss="val_window_loss")


