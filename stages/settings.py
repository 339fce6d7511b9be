"""Each setting declared once: a dataclass field carries its option's name, type,
default, check and help text, and the command line is generated from it.

    @dataclass
    class TrainConfig:
        # The reason for the default, one line, next to it.
        patience: int = setting(5, "Stop after this many epochs without a better validation macro-F1.",
                                check=at_least(1))

        def __post_init__(self):
            check_settings(self)  # choices and checks of every field; UserError naming --patience

    @click.command()
    @click_options(TrainConfig)
    def train_head(**settings):
        config = TrainConfig(**settings)

What a field's metadata may say (all optional but `help`):

    help      the option's help text
    option    the option's name without dashes when it is not the field's (`epochs` for max_epochs)
    choices   the accepted values: a click.Choice on the command line, checked in check_settings
    check     a function value -> None or what is wrong ("must be at least 1"); see at_least, ...
    shown     the default as `--help` states it, for a default that is computed or None
    parse     turns the command line's string into the field's value (comma-separated lists)
    path      "file", "folder" or "any": a path, refused as the wrong kind (click.Path); the
              type is otherwise read from the annotation (int, float, str, bool, Path)
    negatable a boolean that is `--x/--no-x` rather than a plain `--x` flag (the default for
              booleans whose default is not False)

A field without metadata (or without `help`) is a setting of the library only, not an
option. Shared field sets: `CorpusSettings` (the corpus options of embed, finetune,
evaluate and predict) and the `*_setting()` makers below for options several commands
share with the same meaning. Checks that need a loaded encoder (a window above the
model's maximum, a batch below a window) are the functions at the end, called by every
stage that loads one.

Reads and writes nothing; click is imported only when a command line is generated.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from stages.data import LABEL_SEP, NEWSGROUPS
from stages.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
JSON_HELP = "Print the summary as one JSON object instead of a line."


def setting(default=None, help: str = "", *, option: str | None = None, choices=None, check=None,
            shown: str | None = None, parse=None, path: str | None = None, negatable: bool | None = None):
    """A dataclass field that is also a command-line option (see the module docstring)."""
    metadata = {"help": help, "option": option, "choices": tuple(choices) if choices else None,
                "check": check, "shown": shown, "parse": parse, "path": path, "negatable": negatable}
    return field(default=default, metadata=metadata)


def like(cls, name: str, **changes):
    """The setting `name` of dataclass `cls` again (its default, help, check...), with `changes`:
    for a field two configs share, such as train-head's --dropout and the head's."""
    original = next(f for f in dataclasses.fields(cls) if f.name == name)
    metadata = {**original.metadata}
    default = changes.pop("default", original.default)
    metadata.update(changes)
    if dataclasses.MISSING is default:
        raise TypeError(f"{cls.__name__}.{name} has no default; give one")
    return field(default=default, metadata=metadata)


def option_name(cls_or_field, name: str | None = None) -> str:
    """`--chunk-tokens`: the option of a field (or of field `name` of a dataclass)."""
    found = cls_or_field if name is None else next(f for f in dataclasses.fields(cls_or_field) if f.name == name)
    return "--" + (found.metadata.get("option") or found.name).replace("_", "-")


# --- checks --------------------------------------------------------------------------


def at_least(low):
    return lambda value: None if value >= low else f"must be at least {low}"


def positive(value):
    return None if value > 0 else "must be positive"


def fraction(value):
    return None if 0.0 < value < 1.0 else "must be between 0 and 1 (exclusive)"


def in_range(low, high):
    """low <= value < high."""
    return lambda value: None if low <= value < high else f"must be in [{low}, {high})"


def one_to(high):
    return lambda value: None if 1 <= value <= high else f"must be 1 to {high}"


def check_settings(config) -> None:
    """Every option field of `config` against its choices and check; UserError naming the
    option. A field left at a default of None ("automatic") is not checked."""
    for f in dataclasses.fields(config):
        if "help" not in f.metadata:
            continue
        value = getattr(config, f.name)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{option_name(f)} is one of {', '.join(choices)}; got {value!r}")
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise UserError(f"{option_name(f)} {problem}; got {value}")


# --- the command line ------------------------------------------------------------------


def _click_type(f, hint):
    import click

    path = f.metadata.get("path")
    if path is not None:
        return click.Path(dir_okay=path != "file", file_okay=path != "folder")
    if f.metadata.get("choices"):
        return click.Choice(list(f.metadata["choices"]))
    if f.metadata.get("parse"):
        return click.STRING  # the command line gives a string; parse makes the value
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = typing.get_origin(args[0]) or args[0]
    if base is Path:
        return click.Path()
    return {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}.get(base, click.STRING)


def click_option(f, hint):
    """The click option of one dataclass field."""
    import click

    meta = f.metadata
    name = (meta.get("option") or f.name).replace("_", "-")
    help_text = meta["help"] + (f"  [default: {meta['shown']}]" if meta.get("shown") else "")
    show_default = False if meta.get("shown") or f.default in (None, (), []) else None
    if (typing.get_args(hint) or (hint,))[0] is bool or hint is bool:
        negatable = meta.get("negatable")
        if negatable is None:
            negatable = f.default is not False
        decls = [f"--{name}/--no-{name}" if negatable else f"--{name}", f.name]
        return click.option(*decls, default=f.default, is_flag=not negatable or None, help=help_text,
                            show_default=show_default)
    kwargs = {"type": _click_type(f, hint), "help": help_text, "show_default": show_default}
    parse = meta.get("parse")
    if parse is not None:  # the string is parsed; an empty default (None, ()) is kept as it is
        empty = f.default in (None, (), [])
        default = f.default
        kwargs.update(default=None if empty else f.default,
                      callback=lambda ctx, param, value: default if value is None else parse(value))
    else:
        kwargs.update(default=f.default)
    return click.option(f"--{name}", f.name, **kwargs)


def click_options(cls, first: tuple[str, ...] = ()):
    """A decorator adding one click option per option field of dataclass `cls`, in field
    order (the fields named in `first` before the others); the command then receives them
    as keyword arguments named after the fields, so `cls(**settings)` builds the config
    (and its __post_init__ checks it)."""
    hints = typing.get_type_hints(cls)
    chosen = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    chosen.sort(key=lambda f: first.index(f.name) if f.name in first else len(first))

    def decorate(command):
        for f in reversed(chosen):  # click lists options in the order they are applied, last first
            command = click_option(f, hints[f.name])(command)
        return command
    return decorate


def option_fields(cls) -> list[str]:
    """The names of the fields of `cls` that are command-line options."""
    return [f.name for f in dataclasses.fields(cls) if "help" in f.metadata]


# --- shared settings -------------------------------------------------------------------


def split_list(value: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; nothing -> None."""
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _split_tuple(value: str | None) -> tuple[str, ...]:
    return tuple(split_list(value) or ())


@dataclass(kw_only=True)
class CorpusSettings:
    """The corpus options, as embed, finetune, evaluate (for the report's texts) and predict
    (--data) take them; `stages.data.load_corpus` reads them. evaluate and predict redeclare
    `data` and `split` (no corpus unless asked; the test split)."""

    data: str | None = setting(
        NEWSGROUPS, "'20newsgroups', 'reuters21578', a folder with one sub-folder per class, or a .csv/.jsonl "
                    "with text and label (or labels: a set per document).")
    split: str = setting("train", "Split of a source that has splits (20newsgroups, reuters21578: train or test).")
    categories: list[str] | None = setting(  # noqa: RUF009 (a field)
        None, "Comma-separated classes to keep.", shown="all", parse=split_list)
    remove: tuple[str, ...] = setting((), "20newsgroups only: any of headers,footers,quotes to strip.",
                                      parse=_split_tuple)
    data_home: str | None = setting(
        None, "Where to look for 20news-bydate.tar.gz and reuters21578.tar.gz first (then $SCIKIT_LEARN_DATA, "
              "data/, ../shared/datasets).")
    limit: int | None = setting(None, "Keep only the first N documents (fixed order).", check=at_least(1))
    # "|"; the reason is in stages.data (LABEL_SEP).
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
    # MiniLM was trained on inputs of at most 256 tokens and attention cost grows
    # with length; 256 keeps most posts (median 337 tokens) to one or two windows.
    return setting(256, help)


def stride_setting(help: str = "Tokens shared by consecutive windows."):
    # 32 tokens of overlap give each boundary sentence context on both sides for
    # about 14% more windows than none.
    return setting(32, help)


def threads_setting(default: int, help: str = "Torch threads (0: torch's default)."):
    return setting(default, help, check=at_least(0))


def device_setting():
    return setting("auto", "auto: CUDA if visible.", choices=DEVICES)


def precision_setting(help: str = "auto: bf16 autocast on CPUs with native bf16 and on CUDA "
                                  "(fp16 where bf16 is missing), else fp32."):
    return setting("auto", help, choices=PRECISIONS)


def progress_setting(help: str = "Progress bar."):
    # None: a bar on a terminal, quiet in logs.
    return setting(None, help, shown="only on a terminal")


# --- checks that need the encoder ------------------------------------------------------


def check_window_fits(chunk_tokens: int, max_tokens: int, model: str) -> None:
    """--chunk-tokens against the most tokens the encoder takes."""
    if chunk_tokens > max_tokens:
        raise UserError(f"--chunk-tokens {chunk_tokens} is above the {max_tokens} tokens {model} takes")


def check_batch_holds_window(batch_tokens: int, chunk_tokens: int, window: str = "--chunk-tokens") -> None:
    """A batch's token budget must hold one whole window."""
    if batch_tokens < chunk_tokens:
        raise UserError(f"--batch-tokens {batch_tokens} must be at least {window} {chunk_tokens}")
