"""The loaders (one module per dataset, on :mod:`dataset.base`), their shared preprocessing (:mod:`dataset.transforms`),
input checks (:mod:`dataset.checks`), label tables (:mod:`dataset.labels`) and settings (:mod:`dataset.settings`)."""
