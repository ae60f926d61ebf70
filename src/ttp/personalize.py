"""Online test-time personalization of one output: sample adaptively with the run's stopping
rule, pick with one of the run's trained reward models (of any family; by default the run's
``controller_selector``).

``Personalizer`` keeps the policy backend, the sentence encoder and the reward model warm, so
``ttp generate`` and the server pay their start-up once; ``generate(query)`` takes any query
with its profile, from a task file or from a profile store."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ttp.analysis.allocation import OnlineRule
from ttp.analysis.control import ControllerConfig, validation_calibration
from ttp.analysis.online import Decision, choose_online
from ttp.analysis.pools import Pools
from ttp.policy import COUNT_TOKENS, MAX_POOL_SIZE, SCORE, Completion, PolicyBackend, check_samples
from ttp.policy.registry import EngineConfig
from ttp.rewards.families import FAMILIES, Inputs, family_of, servable
from ttp.rewards.features import EmbeddingCache
from ttp.rewards.remote import RemoteScorer
from ttp.rewards.selection import Selector, rule_scores
from ttp.runs.config import RunConfig
from ttp.runs.evaluation import selectors
from ttp.runs.folder import RunFolder
from ttp.runs.results import read_online_rules, read_table
from ttp.tasks.data import Query, Task, load_task
from ttp.tasks.prompts import PromptBuilder, as_generated, forget_indexes, profile_for
from ttp.tasks.utility import PRIMARY

# a query with no profile (an unknown user): the plain policy, picked as vLLM's best_of picked
PLAIN_SELECTOR = "generic/mean_logprob"
PLAIN_REASON = "no known user: the plain policy, picked by mean token log-probability"


@dataclass(frozen=True)
class Generation:
    """One output: the controller's decision and what it cost."""

    decision: Decision
    completions: list[Completion]      # every sample drawn, in order
    prompt_tokens: int                 # the prompt's tokens (0 where the backend cannot count them)
    personalized: bool = True          # False: the query had no profile (PLAIN_SELECTOR picked)


@dataclass(frozen=True)
class Ratings:
    """The scores of given candidates, as one selector gives them (``mean``/``sd``: None for the plain pick)."""

    selector: str
    score: list[float]
    mean: list[float] | None = None
    sd: list[float] | None = None


def _mean_logprob(logprob: float, n_tokens: int) -> float:
    return logprob / max(n_tokens, 1) if np.isfinite(logprob) else -np.inf


class TrainedScorer:
    """A selector's trained reward model, reading what its family reads of one query's candidates."""

    def __init__(self, folder: RunFolder, config: RunConfig, task: Task, policy: str, selector: Selector,
                 backend: PolicyBackend):
        self.family = FAMILIES[family_of(selector.model)]
        self.model = self.family.load(folder.reward_model(task.name, policy, selector.model))
        self.rule, self.lcb_kappa = selector.rule or "mean", config.lcb_kappa
        self.inputs = Inputs({}, task.layout, config.shots, config.convention, lambda: backend,
                             EmbeddingCache(folder.embeddings(task.name), persist=False), backend.name)

    def forget_encoded(self) -> None:
        self.inputs.embeddings.forget_encoded()

    def __call__(self, query: Query, texts: list[str], logprobs, n_tokens):
        frame = pd.DataFrame({"query_id": query.id, "user": query.user, "candidate": range(len(texts)),
                              "text": texts, "logprob": logprobs, "n_tokens": n_tokens})
        X = self.family.query_inputs(query, frame, self.inputs)
        if self.model.is_probabilistic:
            mean, sd = self.model.predict(X, return_std=True)
        else:
            mean, sd = self.model.predict(X), np.full(len(texts), np.nan)
        # one prediction serves every rule: the rules only transform (mean, sd)
        return rule_scores(mean, sd, np.zeros(len(texts)), self.rule, self.lcb_kappa), mean, sd


class Personalizer:
    """``Personalizer(folder, config, task, policy).generate(query, budget)`` -> ``Decision``."""

    def __init__(self, folder: RunFolder, config: RunConfig, task: Task, policy: str = "personalized",
                 backend: PolicyBackend | None = None, selector: str | None = None,
                 engine: EngineConfig | None = None, reward: RemoteScorer | None = None):
        if policy not in config.policies:
            raise ValueError(f"policy {policy!r} is not in this run; policies: {list(config.policies)}")
        self.folder, self.config, self.task, self.policy = folder, config, task, policy
        self.selector = Selector.parse(selector or config.controller_selector)
        online = self._online_rule()
        self.rule, self.kappa, self.dataset_spread = online.rule, online.kappa, online.dataset_spread
        # the rule's spread shrinkage, chosen on validation users with it
        self.controller = ControllerConfig(collapse_tau=config.collapse_tau, prior_strength=online.prior_strength)
        self.prompts = PromptBuilder(task.layout, policy, config.shots, config.convention)
        self.plain_prompts = PromptBuilder(task.layout, "plain", config.shots, config.convention)
        # another engine than the run's may sample (a GPU server), its pools alike the run's
        self.backend = backend or (engine or config.engine.located(folder.root)).make(MAX_POOL_SIZE)
        self.scorer = self._scorer(reward)

    def _scorer(self, reward: RemoteScorer | None):
        """What scores candidates: the selector's trained model, or the endpoint its scores came from."""
        served_elsewhere = family_of(self.selector.model) not in FAMILIES
        if reward is None and served_elsewhere:
            raise ValueError(f"selector {str(self.selector)!r} holds scores made outside the run; pick with it "
                             f"online by giving the endpoint that made them (--reward-url)")
        if reward is not None and not served_elsewhere:
            raise ValueError(f"--reward-url picks with scores the run has judged: score its pools first "
                             f"(`ttp scores RUN --from-url URL --task-name {self.task.name} --name NAME`), then "
                             f"serve with --selector NAME")
        if reward is not None:
            return lambda query, texts, logprobs, n_tokens: reward(query.user, query.input, texts, logprobs, n_tokens)
        return TrainedScorer(self.folder, self.config, self.task, self.policy, self.selector, self.backend)

    def _online_rule(self) -> OnlineRule:
        """The stopping rule, its spread shrinkage and the calibration the allocate stage chose
        for this selector on validation users; before that stage has run, uniform N."""
        folder, task, policy = self.folder, self.task.name, self.policy
        path = folder.online_rules(task, policy)
        if path.exists():
            rules = read_online_rules(folder, task, policy)
            self._check_trained(sorted(rules))
            return rules[str(self.selector)]
        validation = Pools.from_frame(read_table(folder.scores(task, policy, "validation"),
                                                 f"ttp rewards {folder.root}"))
        self._check_trained([str(s) for s in selectors(validation) if servable(s.model)])
        warnings.warn(f"{path} is missing: sampling the full budget (uniform N); "
                      f"`ttp allocate {folder.root}` chooses the stopping rule on validation users")
        kappa, spread = validation_calibration(validation[self.selector.column], validation[PRIMARY])
        return OnlineRule("uniform", ControllerConfig().prior_strength, kappa, spread)

    def _check_trained(self, trained: list[str]) -> None:
        if str(self.selector) not in trained:
            # a rule the model does not offer (pointwise/lcb), or a probabilistic model without one
            raise ValueError(f"selector {str(self.selector)!r} is not one of this run's: choose one of {trained}")

    def query_for(self, user: str, text: str) -> Query:
        """A new input for a known user of the task, with that user's profile (``profile_for``)."""
        mine = [q for q in self.task.queries if q.user == user]
        if not mine:
            raise KeyError(f"user {user!r} has no queries in task {self.task.name}")
        if not text or not text.strip():
            raise ValueError("the input text is empty")
        profile = {item.id: item for q in mine for item in q.profile}
        return Query("online", user, text, profile_for(tuple(profile.values()), text), gold="")

    def score(self, query: Query, texts: list[str], logprobs, n_tokens):
        """``(selection score, predicted mean, sd)`` of each candidate of one query."""
        return self.scorer(query, list(texts), list(logprobs), list(n_tokens))

    def rate(self, query: Query, texts: list[str], logprobs=None, n_tokens=None) -> Ratings:
        """The scores ``generate`` would pick by, for candidates drawn elsewhere: the reward
        model's for a query with a profile, the plain pick's (mean token log-probability)
        without one.  Without the policy's log-probabilities of the texts, they are computed
        by teacher forcing under the prompt the policy would have used."""
        prompts = self.prompts if query.profile else self.plain_prompts
        if logprobs is None:
            self.backend.require(SCORE, "rating candidates sent without their logprob and n_tokens")
            logprobs, n_tokens = zip(*self.backend.score(prompts(query), [as_generated(t) for t in texts]))
        if not query.profile:
            return Ratings(PLAIN_SELECTOR, [_mean_logprob(lp, n) for lp, n in zip(logprobs, n_tokens)])
        score, mean, sd = self.score(query, texts, logprobs, n_tokens)
        return Ratings(str(self.selector), [float(v) for v in score], [float(v) for v in mean],
                       [float(v) for v in sd])

    def generate(self, query: Query, budget: int = 8, min_gain: float = 1e-3, at_least: int = 1,
                 sampling=None, rule: str | None = None) -> Generation:
        """Sample for ``query`` until the stopping rule or ``budget`` says stop (at least
        ``at_least`` samples), and pick by the reward model.  ``sampling`` overrides the run's
        ``SamplingParams`` (temperature, top-p, new tokens); ``rule`` the run's stopping rule.
        A query without a profile gets the plain policy and ``PLAIN_SELECTOR`` instead."""
        check_samples(budget, "budget")
        sampling = sampling or self.config.sampling
        if not query.profile:
            return self._plain(query, budget, sampling)
        prompt = self.prompts(query)
        prompt_tokens = self.count_tokens(prompt)
        drawn = []

        def draw(k: int) -> list[str]:
            drawn.extend(self._sample(prompt, sampling.model_copy(update={"n": k, "seed": sampling.seed + len(drawn)})))
            return [c.text for c in drawn[-k:]]

        def score(texts: list[str]):
            return self.score(query, texts, [c.logprob for c in drawn], [c.n_tokens for c in drawn])

        decision = choose_online(draw, score, budget, self.kappa, self.dataset_spread, self.controller,
                                 min_gain=min_gain, at_least=at_least, rule=rule or self.rule)
        return Generation(decision, list(drawn), prompt_tokens)

    def _sample(self, prompt: str, sampling) -> list:
        """Completions as the task writes them (its labels dropped), as the run's pools hold them."""
        return [replace(c, text=self.task.layout.clean(c.text)) for c in self.backend.sample(prompt, sampling)]

    def _plain(self, query: Query, budget: int, sampling) -> Generation:
        """The whole budget from the plain prompt; the candidate of highest mean token
        log-probability (the first of equals)."""
        prompt = self.plain_prompts(query)
        completions = self._sample(prompt, sampling.model_copy(update={"n": budget}))
        scores = [_mean_logprob(c.logprob, c.n_tokens) for c in completions]
        best = int(np.argmax(scores))
        decision = Decision(completions[best].text, float(scores[best]), np.nan, np.nan, len(completions), PLAIN_REASON,
                            [c.text for c in completions], [float(s) for s in scores])
        return Generation(decision, list(completions), self.count_tokens(prompt), personalized=False)

    def forget_requests(self) -> None:
        """Drop what requests left in memory that may hold a user's texts (the trained scorer's
        embeddings and the profile indexes), once a user's data is erased."""
        forget_indexes()
        if isinstance(self.scorer, TrainedScorer):
            self.scorer.forget_encoded()

    def count_tokens(self, text: str) -> int:
        """The backend's token count of ``text`` (0 where it cannot count)."""
        return self.backend.count_tokens(text) if self.backend.can(COUNT_TOKENS) else 0

    @classmethod
    def from_run(cls, root, task_name: str, policy: str = "personalized", backend: PolicyBackend | None = None,
                 selector: str | None = None, server_url: str | None = None, server_model: str | None = None,
                 server_concurrency: int | None = None, reward: RemoteScorer | None = None) -> "Personalizer":
        """The personalizer of one task and policy of a finished run folder; ``selector`` picks
        with another of the run's trained reward models than its ``controller_selector``;
        ``server_url`` samples from an OpenAI-compatible server instead of the run's engine;
        ``reward`` picks with a scoring endpoint whose scores the run has judged (``ttp scores
        --from-url``), named by ``selector``."""
        folder = RunFolder.existing(root)
        config = RunConfig.load(folder.config)
        engine = config.engine.on_server(server_url, server_model, server_concurrency) if server_url else None
        names = []
        for spec in config.tasks:
            task = load_task(spec.path, spec.name, spec.layout)
            if task.name == task_name:
                return cls(folder, config, task, policy, backend, selector, engine, reward)
            names.append(task.name)
        raise KeyError(f"task {task_name!r} is not in this run; tasks: {names}")
