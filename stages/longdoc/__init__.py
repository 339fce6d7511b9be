"""longdoc: classify documents far longer than a BERT window, in two stages joined by an HDF5 cache.

The six stages, each a module here, run by the command line (`longdoc.cli`):

    embed        corpus -> windows -> encoder -> cache (.h5)         (distributed: the same under torchrun)
    finetune     corpus -> windows -> encoder with its top layers trained (optional, before embed)
    train_head   cache -> pooling head + linear branch (.pt)
    evaluate     head + cache -> metrics and a report
    predict      head + raw text or a whole corpus -> labels

`configs` holds every command's settings. The stages compose building blocks, one
sub-package per concern, lowest first: runtime, settings, corpus, terms, encoding, cache,
heads, explain, reports, training, embedding (docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
