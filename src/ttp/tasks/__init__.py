"""Personalized tasks: LaMP / LongLaMP loaders, the embedded default tasks, profile retrieval
and prompts, and the utility (ROUGE) of a candidate against the gold output."""
