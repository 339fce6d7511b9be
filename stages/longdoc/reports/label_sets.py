"""The scores and report of a multi-label head: what `evaluate` writes for label sets.

Reads the true label sets (bool [documents, head labels], and [documents, unseen labels]
for the test labels the head never saw), the head's probabilities and its decision
(`longdoc.heads.decision.Decision`); returns `metrics.json`'s record and `report.md`'s text,
and draws the per-label F1 against support (`label_f1.png`). Pure functions but the PNG.

    micro/macro/samples-F1, subset accuracy, Hamming loss   `multilabel_scores` over every label:
                    the head's, and the unseen ones, which it never predicts, so their documents
                    count as missed (a false negative each) and each unseen label scores F1 0
    per_label       precision, recall, F1, support and how often predicted, per label
    never_predicted the labels with test documents that the head never gave
    by_length       micro-F1 and subset accuracy by windows per document
    calibration     every (document, label) probability against whether the label holds
                    (`calibration`; reliability.png), the head's labels only
    branches        a fused head's branches alone, each decided at probability 0.5 with the
                    head's empty-set rule (the head's thresholds were fitted for the mix)
"""

from __future__ import annotations

import numpy as np

from longdoc.heads.decision import Decision
from longdoc.reports.metrics import calibration, multilabel_scores, per_label_scores

# Document length buckets, in windows: one window, a few, many, very many (as for classes).
LENGTH_BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-16", 5, 16), (">16", 17, None))


def label_set_metrics(truth: np.ndarray, unseen: np.ndarray, unseen_names: list[str], probabilities: np.ndarray,
                      decision, windows: np.ndarray, names: list[str], branches: dict | None = None) -> dict:
    """metrics.json of label sets (the module docstring). `branches`: {name: probabilities} of
    a fused head's branches alone, with "mix" their weights."""
    predicted = decision.apply(probabilities)
    all_truth = np.concatenate([truth, unseen], 1)
    all_predicted = np.concatenate([predicted, np.zeros_like(unseen)], 1)
    every_name = [*names, *unseen_names]
    metrics = {"task": "multi_label", "documents": int(len(truth)), **multilabel_scores(all_truth, all_predicted)}
    labels = per_label_scores(all_truth, all_predicted)
    metrics["per_label"] = [
        {"label": name, "precision": float(labels["precision"][i]), "recall": float(labels["recall"][i]),
         "f1": float(labels["f1"][i]), "support": int(labels["support"][i]), "predicted": int(labels["predicted"][i]),
         "threshold": float(decision.thresholds[i]) if i < len(names) else None}
        for i, name in enumerate(every_name)]
    metrics["never_predicted"] = [c["label"] for c in metrics["per_label"] if c["support"] and not c["predicted"]]
    metrics["unseen_labels"] = {"labels": len(unseen_names), "names": unseen_names[:50],
                                "documents": int(unseen.any(1).sum()), "missed": int(unseen.sum())}
    metrics["decision"] = {"rule": decision.rule, "empty": decision.empty}
    metrics["labels_per_document"] = {"true": float(all_truth.sum(1).mean()) if len(truth) else 0.0,
                                      "predicted": float(predicted.sum(1).mean()) if len(truth) else 0.0}
    metrics["by_length"] = []
    for bucket, lo, hi in LENGTH_BUCKETS:
        pick = (windows >= lo) & (windows <= (hi if hi is not None else max(int(windows.max(initial=0)), lo)))
        found = multilabel_scores(all_truth[pick], all_predicted[pick]) if pick.any() else None
        metrics["by_length"].append({"windows": bucket, "documents": int(pick.sum()),
                                     "micro_f1": found and found["micro_f1"],
                                     "subset_accuracy": found and found["subset_accuracy"]})
    metrics["calibration"] = calibration(probabilities, truth)
    metrics["label_names"] = list(names)
    if branches:
        metrics["branches"] = {"mix": branches["mix"]}
        for name, branch in branches.items():
            if name != "mix":
                alone = Decision(np.full(len(names), 0.5), decision.empty).apply(branch)
                metrics["branches"][name] = multilabel_scores(all_truth,
                                                              np.concatenate([alone, np.zeros_like(unseen)], 1))
    return metrics


def markdown_label_sets(m: dict, escape) -> str:
    """report.md of label sets; `escape` makes a label name literal Markdown."""
    unseen = m["unseen_labels"]
    lines = [f"# {m['head']} on {m['cache']}", "",
             f"micro-F1 **{m['micro_f1']:.4f}**, macro-F1 **{m['macro_f1']:.4f}**, samples-F1 {m['samples_f1']:.4f}, "
             f"subset accuracy {m['subset_accuracy']:.4f}, Hamming loss {m['hamming_loss']:.5f}; "
             f"{m['documents']:,} documents, {m['labels_per_document']['true']:.2f} labels each "
             f"({m['labels_per_document']['predicted']:.2f} predicted)", "",
             f"Decision (fitted on validation): {m['decision']['rule']} thresholds; a document that no label "
             f"reaches gets {'its most probable label' if m['decision']['empty'] == 'best' else 'no label'}.", "",
             f"Calibration: expected calibration error {m['calibration']['ece']:.4f} over "
             f"{m['calibration']['predictions']:,} (document, label) probabilities; "
             f"{m['calibration']['wrong_above_0.99']:,} of them above 0.99 were wrong (reliability.png).", ""]
    if unseen["labels"]:
        lines += [f"{unseen['labels']} labels of this cache were never seen in training "
                  f"({', '.join(escape(n) for n in unseen['names'][:10])}{' ...' if unseen['labels'] > 10 else ''}): "
                  f"their {unseen['missed']:,} true (document, label) pairs, in {unseen['documents']:,} documents, "
                  f"are scored as missed.", ""]
    never = m["never_predicted"]
    lines += [f"Never predicted: {len(never)} of the labels with test documents"
              + (f" ({', '.join(escape(n) for n in never[:30])}{' ...' if len(never) > 30 else ''})." if never else "."),
              "", "| label | precision | recall | F1 | support | predicted | threshold |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {escape(c['label'])} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} "
              f"| {c['predicted']} | {'-' if c['threshold'] is None else format(c['threshold'], '.3f')} |"
              for c in m["per_label"]]
    if "branches" in m:
        alone = [(name, value) for name, value in m["branches"].items() if name != "mix"]
        lines += ["", "| branch alone (at probability 0.5) | micro-F1 | macro-F1 | weight in the head |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {value['micro_f1']:.4f} | {value['macro_f1']:.4f} | {weight:.3f} |"
                  for (name, value), weight in zip(alone, m["branches"]["mix"])]
    lines += ["", "| windows per document | documents | micro-F1 | subset accuracy |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {b['windows']} | {b['documents']} | {_fmt(b['micro_f1'])} | {_fmt(b['subset_accuracy'])} |"
              for b in m["by_length"]]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
