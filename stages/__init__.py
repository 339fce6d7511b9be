"""Long-document classification in two stages joined by an HDF5 cache.

stage one  `stages.embed`       corpus -> windows -> encoder -> cache (.h5)
stage two  `stages.train_head`  cache -> pooling head checkpoint (.pt)
evaluate   `stages.evaluate`    head + cache -> metrics, reports
predict    `stages.predict`     head + raw text -> labels
"""

__version__ = "0.1.0"
