"""From trained jobs to the submission: the kinds ``mem.soup`` (checkpoint soups), ``mem.predict``
(a soup's predictions of one split) and ``mem.ensemble`` (stitch each scheme's ROI models, average
the schemes, write the Algonauts 2023 submission and scores), their params, and where soups and
predictions live on the shared root. ``memq`` imports the params' validators at submit
time, so this ``__init__`` imports nothing."""
