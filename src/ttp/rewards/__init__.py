"""Reward models: candidate features, the trained models and their selection rules."""
