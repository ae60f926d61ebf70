"""TTP: test-time personalization with Best-of-N, personalized reward models, and the scaling
law that explains their curves.

The public API is listed in ``__all__``; each name is imported on first use, so ``import ttp``
stays light (torch, pandas and llama.cpp load only when needed).  The package's rooms:
``ttp.tasks`` (data, prompts, utility), ``ttp.policy`` (backends, sampling), ``ttp.rewards``
(features, models, selection), ``ttp.analysis`` (Best-of-N, statistics, the law, control),
``ttp.runs`` (configuration, run folder, pipeline, report), ``ttp.personalize`` (online)."""
from importlib import import_module, metadata

__version__ = metadata.version("ttp")   # pyproject.toml's, so the version is written in one place

_EXPORTS = {
    "bon_curves": "ttp.analysis.bon", "oracle_curves": "ttp.analysis.bon", "random_curves": "ttp.analysis.bon",
    "user_bootstrap": "ttp.analysis.bon", "Curve": "ttp.analysis.bon",
    "diagnose": "ttp.analysis.scaling", "Diagnosis": "ttp.analysis.scaling", "fit_ceiling": "ttp.analysis.scaling",
    "expected_max_normal": "ttp.analysis.scaling", "held_out_top_compression": "ttp.analysis.scaling",
    "within_pool_correlation": "ttp.analysis.stats",
    "simulate": "ttp.analysis.simulate", "SimulationConfig": "ttp.analysis.simulate",
    "Pools": "ttp.analysis.pools",
    "evaluate_policy": "ttp.analysis.control", "allocation_study": "ttp.analysis.allocation",
    "RewardModel": "ttp.rewards.models", "RewardConfig": "ttp.rewards.models",
    "Selector": "ttp.rewards.selection", "selection_scores": "ttp.rewards.selection",
    "load_task": "ttp.tasks.data", "split_users": "ttp.tasks.data", "PromptBuilder": "ttp.tasks.prompts",
    "SamplingParams": "ttp.policy", "make_backend": "ttp.policy.registry",
    "RunConfig": "ttp.runs.config", "TaskSpec": "ttp.runs.config", "Pipeline": "ttp.runs.pipeline",
    "run_stages": "ttp.runs.pipeline",
    "Personalizer": "ttp.personalize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ttp' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
