"""Stage two: train a pooling head on cached window vectors; the encoder never runs.

    python cli.py train-head --train data/cache/train.h5 --pooling attention --out runs/head.pt
    python cli.py train-head --train data/cache/train.h5 --val data/cache/dev.h5 ...

Validation is a second cache (`--val`) or a `--val-fraction` of each class of the
training cache: a seeded random draw, or with `--val-split latest` the documents whose
ids sort last (`longdoc.training.split`), as `finetune` holds them out. On a cache whose
encoder was fine-tuned on these same documents, the ones `finetune` held out, whatever
the head's seed (`_held_out_by_finetune`). AdamW with linear
warm-up then cosine decay; after each epoch the window branch is scored on validation
and its best epoch kept (best macro-F1; with both inputs, lowest loss, see below);
training stops after `patience` epochs without improvement. Cross-entropy on logits,
optionally weighted by inverse class frequency.

A head with both inputs is a stack of two branches. Its linear branch (`longdoc.training.linear_fit`,
liblinear) is fitted on the training share in a second thread while the window branch
trains its epochs; the window branch's epoch is the one of lowest validation loss, the
quantity the stack reads (its logits, weighed by cross-entropy). Once both are done, the
weights of the two branches are fitted on validation (`Head.fit_mix`), and then, where
`--refit-terms` (the default) allows, the linear branch is fitted again on all of
`--train`. The history is the window branch's; the record's validation scores are the
whole head's before the refit. A terms-only head fits its branch and scores it once
("epoch 0").

Reproducible: the same seed on the same machine gives the same numbers (the
generator seeds the split, the batch order and the tie-breaks; torch's seed the
initial weights and dropout). Memory: see `longdoc.heads.batches` (the cache is
loaded whole below `memory_budget_mb`, else read per batch by h5py slices).

The epochs are `longdoc.training.loop`'s (the loop `finetune` runs too); `HeadTask`
(`longdoc.training.head_task`) is what is particular to a head. Resumable: after each epoch, `<out>.partial/state.pt` holds the
window branch, optimizer, schedule, the generator's and torch's random states, the
history and the best state; a resumed run fits the linear branch again (liblinear with a
fixed seed: the same weights), so the same command
run again continues from the last finished epoch to the same head as an uninterrupted
run, with or without `--overwrite` (so `make train-head`, which passes it, resumes too).
Other settings (or other caches) against that folder are refused, naming the
difference, and so is a `state.pt` that is not one this run could have saved
(`longdoc.training.state.check_state`); with `--overwrite` both start afresh. A diverged run
removes the folder (the loop's check).

Writes the checkpoint (`longdoc.heads.checkpoint`, atomically: an interrupted run leaves
an earlier file intact) and `<out stem>-curve.png`, loss and validation accuracy
per epoch; `<out>.partial/` goes once they are written. Not supported: fine-tuning
the encoder, GPUs beyond what `--device` gives torch for the (small) head.

Label sets. The task is the training cache's (`--val` of the other task is refused): on a
multi-label cache the head has a sigmoid per label and the window branch learns by binary
cross-entropy (`--class-weights`, on by default for label sets: each label's positives weighed by
its negatives / positives,
`longdoc.training.head_task.positive_weight_tensor`; the linear branch's SVMs then weigh
theirs as `class_weight="balanced"` does), epochs compared by validation loss; the linear
branch is one binary SVM per label (`longdoc.training.linear_fit.fit_binary_svms`); the
stack's two weights are fitted by binary cross-entropy on validation; validation is drawn
by iterative stratification (`longdoc.training.split.iterative_split`). Last, the decision
(a threshold per label and what a document no label reaches gets) is fitted on the whole
head's validation probabilities (`longdoc.training.thresholds.fit_decision`, before the
refit) and saved in the head. The record's validation scores are the decision's: subset
accuracy (as `val_accuracy`), macro-F1 and micro-F1.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from longdoc.cache.reader import (
    CACHE_IDENTITY,
    ENCODER_IDENTITY,
    WindowCache,
    differences,
    open_cache,
)
from longdoc.configs import TrainConfig
from longdoc.heads.batches import (
    CacheDocuments,
)
from longdoc.heads.checkpoint import encoder_record, save_checkpoint
from longdoc.heads.decision import Decision
from longdoc.heads.head import Head
from longdoc.reports.metrics import multilabel_scores
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import Background, memory_step, peak_memory_bytes, release_freed_memory
from longdoc.runtime.workdir import WorkDir, check_not_an_input, check_output_path
from longdoc.settings.model import HeadConfig, precision_differences
from longdoc.terms.tfidf import TermWeights
from longdoc.training.head_task import HeadTask, class_weight_tensor, positive_weight_tensor, task_loss
from longdoc.training.linear_fit import LinearBranch, fit_linear_branch, refit_linear_branch
from longdoc.training.loop import (
    LoopOutcome,
    LoopSettings,
    best_entry,
    plot_curve,
    resume,
    run_epochs,
)
from longdoc.training.split import validation_split
from longdoc.training.thresholds import fit_decision


@dataclass
class TrainSummary(LoopOutcome):
    out: Path
    pooling: str
    parameters: int
    n_train: int
    n_val: int
    task: str = "single_label"
    val_micro_f1: float | None = None  # label sets: validation micro-F1 at the head's decision

    def line(self) -> str:
        outcome = self.outcome(self.n_val)
        if self.val_micro_f1 is not None:
            outcome = (f"best epoch {self.best_epoch}/{self.epochs_run}, validation micro-F1 {self.val_micro_f1:.4f}, "
                       f"macro-F1 {self.val_macro_f1:.4f}, subset accuracy {self.val_accuracy:.4f} "
                       f"({self.n_val:,} documents)")
        return (f"trained {self.pooling} head ({self.parameters:,} parameters) on {self.n_train:,} documents: "
                f"{outcome}; {self.seconds:.1f} s, "
                f"peak memory {self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")


def _held_out_by_finetune(config: TrainConfig, train_cache: WindowCache) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, val) as `finetune` split these very documents, when the cache's encoder was
    fine-tuned on them; else None. A head validated on documents the encoder trained on
    trusts its windows more than test does: with seeds 1 and 2 (finetune used 0), the
    20-class fused head scored 0.863 and 0.872, seed 0 0.879 (docs/benchmarks-history.md). So the head
    holds out finetune's documents whatever its own seed; a different fraction or kind of
    split is refused, since no split could then keep both promises."""
    try:
        lineage = json.loads(str(train_cache.attrs.get("encoder_lineage") or "{}"))
    except ValueError:
        lineage = None
    tuned = lineage.get("settings", {}) if isinstance(lineage, dict) else None
    seed = tuned.get("seed", 0) if isinstance(tuned, dict) else None
    if type(seed) is not int or seed < 0:
        raise UserError(f"{config.train}: its encoder_lineage attribute is damaged (not a JSON object with "
                        f"a seed of 0 or more); embed it again")
    if not lineage or lineage.get("data_fingerprint") != train_cache.attrs.get("data_fingerprint"):
        return None
    tuned_fraction, tuned_split = tuned.get("val_fraction", 0.1), tuned.get("val_split", "random")
    if (tuned_fraction, tuned_split) != (config.val_fraction, config.val_split):
        raise UserError(f"{config.train}: its encoder was fine-tuned on these documents holding out "
                        f"--val-fraction {tuned_fraction} --val-split {tuned_split}; pass the same, or a --val "
                        f"cache of other documents")
    return validation_split(_split_labels(train_cache), train_cache.doc_ids(), config,
                            np.random.default_rng(seed))


def _split_labels(cache: WindowCache) -> np.ndarray:
    """What the validation split stratifies by: the classes, or the label matrix of label sets."""
    return cache.label_matrix() if cache.multi_label else cache.labels


def _open_validation(config: TrainConfig, train_cache: WindowCache, rng):
    """(train docs, validation CacheDocuments, the validation cache to close or None)."""
    budget = config.memory_budget_mb
    if config.val is None:
        train_docs, val_docs = _held_out_by_finetune(config, train_cache) or validation_split(
            _split_labels(train_cache), train_cache.doc_ids(), config, rng)
        if len(val_docs) == 0:
            raise UserError(f"--val-fraction {config.val_fraction} of {train_cache.n_docs} documents "
                            f"leaves no validation documents; raise it or pass --val")
        return train_docs, CacheDocuments.from_cache(train_cache, val_docs, memory_budget_mb=budget), None
    val_cache = open_cache(config.val)
    if val_cache.task != train_cache.task:
        val_cache.close()
        raise UserError(f"--val {config.val} is a {val_cache.task.replace('_', '-')} cache and --train "
                        f"{config.train} a {train_cache.task.replace('_', '-')} one; validate on a cache of "
                        f"the same task")
    diff = (differences(val_cache.attrs, train_cache.attrs, ENCODER_IDENTITY, names=("--train", "--val"))
            + precision_differences(val_cache.attrs, train_cache.attrs, names=("--train", "--val")))
    if diff:
        val_cache.close()
        raise UserError(f"--val {config.val} was made differently from --train ({'; '.join(diff)})")
    if val_cache.term_hashing != train_cache.term_hashing:
        val_cache.close()
        raise UserError(f"--val {config.val} holds other term counts than --train (term_hashing differs); "
                        f"embed both the same way")
    if val_cache.label_names != train_cache.label_names:
        val_cache.close()
        raise UserError(f"--val {config.val} has other label names than --train "
                        f"({len(val_cache.label_names)} vs {len(train_cache.label_names)} classes, "
                        f"or another order)")
    return np.arange(train_cache.n_docs), CacheDocuments.from_cache(val_cache, memory_budget_mb=budget), val_cache


def _fit_linear(head: Head, train: CacheDocuments, val: CacheDocuments, config: TrainConfig
                ) -> tuple[LinearBranch, list[str]]:
    """(the linear branch fitted on `train` with validation's choices, its log lines), for a
    second thread: reads `head` for its configuration only and logs nothing itself, so the
    log's lines come in the same order on every run."""
    lines = []
    return fit_linear_branch(head, train, val, config.term_c, log=lines.append, balanced=_balanced(head, config)), lines


def _weighted(head: Head, config: TrainConfig) -> bool:
    """--class-weights, or where not given its default: on for label sets, off for classes (configs.py)."""
    return config.class_weights if config.class_weights is not None else head.multi_label


def _balanced(head: Head, config: TrainConfig) -> bool:
    """Whether the linear branch's SVMs weigh each label's documents (label sets with class weights)."""
    return head.multi_label and _weighted(head, config)


def _fit_decision(head: Head, task: HeadTask, config: TrainConfig, log) -> tuple[Decision, dict]:
    """The decision of a multi-label head fitted on the whole head's validation probabilities
    (its own generator, so a resumed run draws the same folds), and the validation scores
    at that decision."""
    task.head_scores()  # the whole head's validation logits (weighing the branches first if stacked)
    probabilities = head.probabilities(torch.from_numpy(task.val_logits)).numpy()
    truth = task.val.labels[task.val.docs]
    decision = fit_decision(probabilities, truth, np.random.default_rng(config.seed))
    found = multilabel_scores(truth, decision.apply(probabilities))
    log(f"decision: {decision.rule} thresholds, a document that no label reaches gets "
        f"{'its best label' if decision.empty == 'best' else 'no label'}: validation micro-F1 "
        f"{found['micro_f1']:.4f}, macro-F1 {found['macro_f1']:.4f}, subset accuracy {found['subset_accuracy']:.4f}")
    return decision, {"val_accuracy": found["subset_accuracy"], "val_macro_f1": found["macro_f1"],
                      "val_micro_f1": found["micro_f1"], "val_samples_f1": found["samples_f1"]}


# The linear branch holds the TF-IDF rows (and mean window vectors) of every document it is fitted on.
LINEAR_MEMORY_HINT = "pass --inputs windows (no linear branch), or train on fewer documents"


def _install_linear(head: Head, linear: Background, log) -> LinearBranch:
    """Wait for the linear branch, log its lines, put it in `head`."""
    with memory_step("fitting the linear branch", LINEAR_MEMORY_HINT):
        chosen, lines = linear.result()
    # The thread's fits are freed into its own heap arena, which glibc keeps: without this the
    # refit after it peaked at 1.33-1.54 GiB on 20 Newsgroups, with it 1.25-1.26 (BENCHMARKS S5).
    release_freed_memory()
    for line in lines:
        log(line)
    chosen.load_into(head)
    return chosen


def _settings(config: TrainConfig, caches: dict) -> dict:
    """What a resumed run must share with the interrupted one: every setting that changes
    the numbers, and what the caches hold."""
    ignore = ("out", "overwrite", "progress", "curve", "threads", "memory_budget_mb")
    settings = {key: value for key, value in asdict(config).items() if key not in ignore}
    for name, cache in caches.items():
        settings[name] = {**{key: str(cache.attrs.get(key)) for key in CACHE_IDENTITY}, "n_docs": cache.n_docs}
    return json.loads(json.dumps(settings, default=str))


def run(config: TrainConfig, log=None) -> TrainSummary:
    started = time.perf_counter()
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(config.out)
    check_output_path(out)
    outputs = [out, config.curve_path] if config.curve else [out]
    for path in outputs:
        check_not_an_input(path, {"--train": config.train, "--val": config.val},
                           what="--out" if path == out else "the curve")
        if path.exists() and not config.overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it, or choose another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train_cache = open_cache(config.train)
    val_cache = None
    try:
        names = train_cache.label_names
        if train_cache.multi_label:
            if not train_cache.label_indices.size:
                raise UserError(f"{config.train}: no document has a label; a classifier needs some")
        else:
            present = np.unique(train_cache.labels)
            if len(present) < 2:
                raise UserError(f"{config.train}: every document is of class {names[present[0]]!r}; "
                                f"a classifier needs at least two classes")
        inputs = config.inputs or ("both" if train_cache.has_terms else "windows")
        if inputs != "windows" and not train_cache.has_terms:
            raise UserError(f"--inputs {inputs}: {config.train} holds no term counts (embedded with --no-terms "
                            f"or before terms existed); embed it again with terms, or pass --inputs windows")
        train_docs, val, val_cache = _open_validation(config, train_cache, rng)
        term_weights = None
        if inputs != "windows":  # TF-IDF statistics from the training documents only
            term_weights = TermWeights.fit(train_cache.term_hashing, train_cache.term_features, train_cache.term_rows,
                                           train_docs)
            val = CacheDocuments.from_cache(val_cache or train_cache, val.docs, memory_budget_mb=config.memory_budget_mb,
                                            term_weights=term_weights)
        train = CacheDocuments.from_cache(train_cache, train_docs, memory_budget_mb=config.memory_budget_mb,
                                          term_weights=term_weights)
        head_config = HeadConfig(pooling=config.pooling, hidden_size=train_cache.hidden_size,
                                 n_classes=len(names), dropout=config.dropout, input_norm=config.input_norm,
                                 inner_dim=config.inner_dim, transformer_layers=config.transformer_layers,
                                 inputs=inputs, n_terms=term_weights.n_terms if term_weights else 0,
                                 task=train_cache.task)
        head = Head(head_config)
        weights = None
        if _weighted(head, config):
            weights = (positive_weight_tensor(train.labels[train_docs]) if head.multi_label
                       else class_weight_tensor(train_cache.labels[train_docs], len(names)))
        loss_fn = task_loss(head.multi_label, weights)  # on logits: it applies log-softmax or log-sigmoid itself
        steps_per_epoch = len(train.plan(config.batch_docs, config.batch_windows))
        task = HeadTask(head, train, val, config, rng, loss_fn, steps_per_epoch)
        # A terms-only head has nothing left to train: one scoring pass ("epoch 0"). In a fused
        # head the window branch is one input of a stack that weighs its logits by cross-entropy,
        # so its epoch is the one of lowest validation loss; on 20 Newsgroups the head's own
        # macro-F1 moved by a few of 1,131 documents from epoch to epoch (docs/benchmarks-history.md).
        # Label sets: macro-F1 at a fixed 0.5 says little before thresholds are fitted, so by loss too.
        by_loss = head.stacked or head.multi_label
        loop = LoopSettings(max_epochs=config.max_epochs if head.reads_windows else 0, patience=config.patience,
                            first_epoch=1 if head.reads_windows else 0, progress=config.progress, unit="batch",
                            leave_bar=False, monitor="val_loss" if by_loss else "val_macro_f1",
                            minimize=by_loss)
        caches = {"train_cache": train_cache, **({"val_cache": val_cache} if val_cache is not None else {})}
        # --overwrite replaces an earlier head and an interrupted run of other settings; an
        # interrupted run of these settings resumes either way (it ends in the same head).
        with WorkDir(out, _settings(config, caches), replace_other_settings=config.overwrite) as work:
            progress = resume(work.dir, task, loop, replace_unusable=config.overwrite)
            linear = chosen = None
            if head.reads_terms:  # liblinear, in a second thread beside the window branch's epochs
                linear = Background(lambda: _fit_linear(head, train, val, config), name="linear branch")
                if not head.reads_windows:
                    chosen = _install_linear(head, linear, log)
            progress = run_epochs(task, progress, work, loop, log)
            best = head_scores = best_entry(progress)
            if head.stacked:
                chosen = _install_linear(head, linear, log)
                head_scores = task.head_scores()
                if not head.multi_label:
                    log(f"head: window branch x {head.mix[0]:.3f} + linear branch x {head.mix[1]:.3f}: validation "
                        f"accuracy {head_scores['val_accuracy']:.4f}, macro-F1 {head_scores['val_macro_f1']:.4f}")
                else:
                    log(f"head: window branch x {head.mix[0]:.3f} + linear branch x {head.mix[1]:.3f}")
            decision = None
            if head.multi_label:
                decision, decided = _fit_decision(head, task, config, log)
                head_scores = {**head_scores, **decided}
            linear_record = chosen and chosen.record
            if head.reads_terms and config.refit_terms and val_cache is None:  # validation has chosen all
                with memory_step("fitting the linear branch again on all documents", LINEAR_MEMORY_HINT):
                    again = refit_linear_branch(head, [train, val], chosen, config.term_c, _balanced(head, config))
                again.load_into(head)
                linear_record = {**chosen.record, "refit": again.record}
                log(f"linear branch fitted again on {again.record['documents']:,} documents (training and validation)")
            training = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
                        "train_cache": str(config.train), "n_train": len(train), "n_val": len(val),
                        "best_epoch": best["epoch"], "val_loss": head_scores["val_loss"],
                        "val_accuracy": head_scores["val_accuracy"], "val_macro_f1": head_scores["val_macro_f1"],
                        "history": progress.history, "linear_branch": linear_record,
                        "seconds": time.perf_counter() - started}
            if head.multi_label:
                training.update(task="multi_label", val_micro_f1=head_scores["val_micro_f1"],
                                val_samples_f1=head_scores["val_samples_f1"])
            save_checkpoint(out, head, names, encoder_record(train_cache), training, term_weights, decision)
            if config.curve:
                plot_curve(progress.history, best["epoch"], config.curve_path)
            work.discard()
        return TrainSummary(out=out, pooling=config.pooling, parameters=head.n_parameters(), n_train=len(train),
                            n_val=len(val), best_epoch=best["epoch"], epochs_run=len(progress.history),
                            val_accuracy=head_scores["val_accuracy"], val_macro_f1=head_scores["val_macro_f1"],
                            seconds=time.perf_counter() - started, peak_memory_bytes=peak_memory_bytes(),
                            task=train_cache.task, val_micro_f1=head_scores.get("val_micro_f1"))
    finally:
        train_cache.close()
        if val_cache is not None:
            val_cache.close()
