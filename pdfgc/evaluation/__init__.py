"""Evaluation protocols behind ``evaluate.py`` (SynthTalk disentanglement and control)."""
