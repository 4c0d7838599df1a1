"""Memory Encoding Model (Mem). Here: the typed config and its submit-time checks, the model and
what it knows of each subject, its data, a job's model and data rebuilt from its params, and
evaluation over a split; the network's building blocks are in ``layers/``, training in ``train/``,
soups, predictions and the ensemble in ``ensemble/``, and what is read from the reference
implementation in ``reference/``."""
