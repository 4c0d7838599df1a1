"""Job kinds that memq runs: the Mem model, data preparation, soups and predictions."""
