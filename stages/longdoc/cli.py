"""The command line, `longdoc` (also `python -m longdoc`, and `python cli.py` in a checkout):
`longdoc COMMAND --help` explains each option and its default.

    python cli.py embed --split train --out data/cache/train.h5      # stage one
    torchrun --standalone --nproc_per_node 2 cli.py embed ...         # stage one, sharded (finetune, predict --data too)
    python cli.py finetune --out runs/finetuned; python cli.py embed --model runs/finetuned ...  # optional
    python cli.py train-head --train data/cache/train.h5 --out runs/head.pt   # stage two
    python cli.py evaluate --head runs/head.pt --cache data/cache/test.h5 --report runs/report \
        --data 20newsgroups --split test                              # report.html with the texts
    python cli.py predict --head runs/head.pt post.txt                # raw text end to end
    python cli.py predict --head runs/head.pt --data corpus.jsonl --out runs/pred.jsonl --explain

Errors a user can cause print one line (`error: ...`) and exit with status 2;
an interrupted command exits 130 and can be rerun to resume.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from longdoc.configs import EmbedConfig, EvaluateConfig, FinetuneConfig, PredictConfig, TrainConfig
from longdoc.runtime.errors import ReportedElsewhere, UserError
from longdoc.settings.fields import click_options

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


class InPipelineOrder(click.Group):
    """Commands listed as declared below (not alphabetically), each with the whole first line
    of its docstring (click would cut it at ~45 characters)."""

    def list_commands(self, ctx):
        return list(self.commands)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.help.splitlines()[0]) for name, command in self.commands.items()])


@click.group(cls=InPipelineOrder, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """Classify documents far longer than a BERT window: embed windows once, then pool."""


@contextlib.contextmanager
def on_interrupt(kept: str | None):
    """Ctrl-C inside a command: one line saying what was kept and how to resume, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        if kept:
            click.echo(f"interrupted: {kept}", err=True)
        raise click.exceptions.Exit(130) from None


def log_line(line: str):
    """A command's progress lines go to stderr; stdout is for its summary."""
    click.echo(line, err=True)


JSON_HELP = "Print the summary as one JSON object instead of a line."


def json_option(help: str = JSON_HELP):
    return click.option("--json", "as_json", is_flag=True, help=help)


# Each command checks its settings (building its config) before it imports its stage, and
# with it torch: `--help` and a refused option take a fraction of a second, not ~3.


@cli.command("embed")
@click_options(EmbedConfig, first=("data", "split", "out"))
@json_option()
def embed(as_json, **settings):
    """Stage one: cache one vector per window of every document in HDF5.

    Under `torchrun --nproc_per_node N cli.py embed ...` each rank embeds a shard of the
    documents and rank 0 joins them into --out (stages/longdoc/distributed.py).
    """
    config = EmbedConfig(**settings)
    from longdoc import distributed
    from longdoc import embed as stage

    ranks = distributed.Ranks.from_env()  # None unless torchrun started several ranks
    said_by = ranks is None or ranks.rank == 0  # one line for a torchrun job, not one per rank
    with on_interrupt("finished blocks are kept; run the same command again to resume" if said_by else None):
        summary = stage.run(config) if ranks is None else distributed.run(config, ranks)
    if summary is not None:  # only rank 0 of a torchrun job has one
        _echo_summary(summary, as_json)


@cli.command("finetune")
@click_options(FinetuneConfig, first=("data", "split", "out"))
@json_option()
def finetune(as_json, **settings):
    """Optional: fine-tune the encoder's top layers on windows labelled with their document's class.

    Under `torchrun --nproc_per_node N cli.py finetune ...` the ranks train data-parallel
    on the same global batches and rank 0 writes --out (stages/longdoc/finetune.py).
    """
    config = FinetuneConfig(**settings)
    from longdoc import finetune as stage

    ranks = stage.Ranks.from_env()  # None unless torchrun started several ranks
    said_by = ranks is None or ranks.rank == 0
    with on_interrupt(f"the last checkpoint is in {config.out}.partial/; run the same command again to resume"
                      if said_by else None):
        summary = stage.run(config, log=log_line, ranks=ranks)
    if summary is not None:  # only rank 0 of a torchrun job has one
        _echo_summary(summary, as_json)


@cli.command("train-head")
@click_options(TrainConfig)
@json_option()
def train_head(as_json, **settings):
    """Stage two: train a pooling head on a window cache; keep the best on validation macro-F1."""
    config = TrainConfig(**settings)
    from longdoc import train_head as stage

    with on_interrupt(f"finished epochs are in {config.out}.partial/; rerun the same command to resume"):
        summary = stage.run(config, log=log_line)
    _echo_summary(summary, as_json)


@cli.command("evaluate")
@click_options(EvaluateConfig, first=("head", "cache", "report"))
@json_option()
def evaluate(as_json, **settings):
    """Score a head on a cache: accuracy, macro-F1, per-class table, confusion matrix, HTML report
    (label sets: micro-, macro-, samples-F1, subset accuracy, per-label table)."""
    config = EvaluateConfig(**settings)
    from longdoc import evaluate as stage

    _echo_summary(stage.run(config), as_json)


@cli.command("predict")
@click_options(PredictConfig, first=("head",))
@click.argument("files", nargs=-1)
@json_option("FILE mode: one JSON object per document instead of tab-separated lines; --data mode: the "
             "summary as one JSON object.")
def predict(files, as_json, **settings):
    """Classify raw text FILES (- for stdin), or every document of --data into --out.

    FILE mode prints label, probability and source per document; --data mode writes one
    JSON line or CSV row per document (id, label, probabilities, true label if known).
    Under `torchrun --nproc_per_node N cli.py predict --data ...` the ranks share the blocks
    and rank 0 writes --out (stages/longdoc/predict.py)."""
    config = PredictConfig(**settings, files=files)
    from longdoc import predict as stage

    ranks = stage.Ranks.from_env()  # None unless torchrun started several ranks
    said_by = ranks is None or ranks.rank == 0
    interrupted = f"finished blocks are kept in {config.out}.partial/; run the same command again to resume"
    with on_interrupt(interrupted if config.data is not None and said_by else None):
        summary = stage.run(config, ranks)
    if summary is not None:  # only rank 0 of a torchrun job has one
        _echo_summary(summary, as_json)


def _echo_summary(summary, as_json: bool):
    """A command's summary: its one human line, or with --json every field as one JSON object
    (what scripts and bench/ read; the line is for people and may change)."""
    if not as_json:
        click.echo(summary.line())
        return
    if hasattr(summary, "as_json"):  # a summary of its own form (predict's FILE mode: a line per document)
        click.echo(summary.as_json())
        return
    import dataclasses
    import json

    click.echo(json.dumps(dataclasses.asdict(summary), default=str))


def main(argv=None) -> int:
    try:
        # Without standalone mode click *returns* an Exit's code (130 after an interrupt)
        # instead of raising it; a command's own return value is None.
        code = cli.main(args=argv, standalone_mode=False)  # named as it was run: longdoc, cli.py, python -m longdoc
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        return 2
    except UserError as error:
        if not isinstance(error, ReportedElsewhere):
            click.echo(f"error: {error}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as error:  # disk full, permissions changed under us, ...
        click.echo(f"error: {error}", err=True)
        return 1
    except MemoryError:  # outside the steps that name their setting (longdoc.runtime.process.memory_step)
        click.echo(f"error: {OUT_OF_MEMORY}", err=True)
        return 2
    except RuntimeError as error:
        torch = sys.modules.get("torch")  # imported by every command that can run out of GPU memory
        if torch is None or not isinstance(error, torch.cuda.OutOfMemoryError):
            raise
        click.echo(f"error: {OUT_OF_MEMORY}", err=True)
        return 2
    return 0


OUT_OF_MEMORY = "out of memory; `python cli.py COMMAND --help` names the settings that bound it"


if __name__ == "__main__":
    sys.exit(main())
