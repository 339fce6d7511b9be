"""The option sets and defaults several commands share, declared once: `CorpusSettings`
(which corpus to read), `ValidationSettings` (which training documents are held out), the
`*_setting()` makers of options several commands take (window geometry, threads, device,
precision, progress, memory budget), and the shared defaults with their reasons. The
commands' own settings (`longdoc.configs`) build on these; blocks never import either.

Imports neither torch nor any stage (longdoc.configs explains why). Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from longdoc.corpus.builtin import LABEL_SEP, NEWSGROUPS
from longdoc.runtime.devices import DEVICES
from longdoc.settings.fields import at_least, fraction, setting, split_list, split_tuple
from longdoc.settings.model import DEFAULT_CHUNK_TOKENS, DEFAULT_STRIDE, INFERENCE_ONLY_PRECISIONS, PRECISIONS

# --- defaults and accepted values several commands share ---------------------------------


# How validation documents are held out (ValidationSettings.val_split).
VAL_SPLITS = ("random", "latest")

# LinearSVC's default and the reference setting (shared/datasets/README.md): C = 1.
DEFAULT_C = 1.0

# 1 GiB of cached vectors is ~700k MiniLM windows, 12x the full 20 Newsgroups; above
# it, stay on disk so train-head's memory does not grow with the corpus.
DEFAULT_MEMORY_BUDGET_MB = 1024


def memory_budget_setting():
    """train-head's and evaluate's --memory-budget-mb."""
    return setting(float(DEFAULT_MEMORY_BUDGET_MB), "Load the cache into RAM when its vectors fit in this; else "
                                                    "read it by slices.", check=at_least(0))


# report.html's caps on the documents it shows (longdoc.reports.html):
MAX_WRONG = 1000  # misclassified documents shown (20NG test: ~1,700 at 0.78 accuracy)
N_CORRECT = 100  # correctly classified documents shown, a seeded random sample

# predict --data: 1,000 documents per resumable block; a kill loses at most ~1 min of MiniLM work on 2 cores.
BLOCK_DOCS = 1000


# --- shared by several commands -------------------------------------------------------


@dataclass(kw_only=True)
class CorpusSettings:
    """The corpus options, as embed, finetune, evaluate (for the report's texts) and predict
    (--data) take them; `longdoc.corpus.sources.load_corpus` reads them. evaluate and predict redeclare
    `data` and `split` (no corpus unless asked; the test split)."""

    data: str | None = setting(
        NEWSGROUPS, "'20newsgroups', 'reuters21578', a folder with one sub-folder per class, or a .csv/.jsonl "
                    "with text and label (or labels: a set per document).")
    split: str = setting("train", "Split of a source that has splits (20newsgroups, reuters21578: train or test).")
    categories: list[str] | None = setting(  # noqa: RUF009 (a field)
        None, "Comma-separated classes to keep.", shown="all", parse=split_list)
    remove: tuple[str, ...] = setting((), "20newsgroups only: any of headers,footers,quotes to strip.",
                                      parse=split_tuple)
    data_home: str | None = setting(
        None, "Where to look for 20news-bydate.tar.gz and reuters21578.tar.gz first (then $SCIKIT_LEARN_DATA, "
              "data/, ../shared/datasets).")
    limit: int | None = setting(None, "Keep only the first N documents (fixed order).", check=at_least(1))
    # "|"; the reason is beside it, in longdoc.corpus.builtin (LABEL_SEP).
    label_sep: str = setting(LABEL_SEP, "A CSV's 'labels' column: what separates a document's labels.",
                             check=lambda sep: None if sep else "must not be empty")

    def corpus(self) -> dict | None:
        """The corpus options as keyword arguments of `load_corpus`, or None without --data."""
        if self.data is None:
            return None
        return {"data": self.data, "split": self.split, "categories": self.categories,
                "remove": tuple(self.remove), "data_home": self.data_home, "limit": self.limit,
                "label_sep": self.label_sep}


def chunk_tokens_setting(help: str = "Tokens per window, special tokens included."):
    return setting(DEFAULT_CHUNK_TOKENS, help)  # the reason is beside it, in longdoc.settings.model


def stride_setting(help: str = "Tokens shared by consecutive windows."):
    return setting(DEFAULT_STRIDE, help)  # the reason is beside it, in longdoc.settings.model


def threads_setting(default: int, help: str = "Torch threads (0: torch's default)."):
    return setting(default, help, check=at_least(0))


def device_setting():
    return setting("auto", "auto: CUDA if visible.", choices=DEVICES)


def precision_setting(help: str = "auto: bf16 autocast on CPUs with native bf16 and on CUDA "
                                  "(fp16 where bf16 is missing), else fp32.", check=None):
    return setting("auto", help, choices=PRECISIONS, check=check)


def float_precision(value: str) -> str | None:
    """Fine-tuning trains the encoder's weights under autocast: int8 Linear layers have no float
    weights to train, and bf16-true would round the fp32 weights AdamW keeps to bf16."""
    if value not in INFERENCE_ONLY_PRECISIONS:
        return None
    return (f"cannot be {value} for finetune: training needs fp32 weights under autocast ({value} is for "
            f"embed and predict; use auto, bf16 or fp32)")


def progress_setting(help: str = "Progress bar."):
    # None: a bar on a terminal, quiet in logs.
    return setting(None, help, shown="only on a terminal")


@dataclass
class ValidationSettings:
    """How `finetune` and `train-head` hold out validation documents: declared once here, so
    both commands hold out the same documents (a head's validation posts were never seen
    by an encoder fine-tuned with the same settings)."""

    # 10% of 20NG's training posts (1,131): macro-F1 moves by ~0.5 points between epochs.
    val_fraction: float = setting(0.1, "Share of each class's training documents held out for validation "
                                       "(0 to 1).", check=fraction)
    # random: the usual stratified draw. latest: a held-out set from the end of the period,
    # as a later test set is; on 20 Newsgroups the random split overstates test by 7-9
    # points of macro-F1 (docs/BENCHMARKS.md), since its posts share threads and
    # signatures with the training posts.
    val_split: str = setting("random", "Which documents are held out: random (stratified by class, seeded) or "
                                       "latest (in each class, those whose ids sort last, numbers compared as "
                                       "numbers: on 20 Newsgroups the newest posts).", choices=VAL_SPLITS)
