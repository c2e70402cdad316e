"""Evaluations: SAEBench wrappers fed with the harness's loaded model and data."""
