"""Evaluation: the Algonauts 2023 score of a submission against a test truth, and the grid report."""
