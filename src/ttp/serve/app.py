"""``ttp serve``: personalized Best-of-N behind the OpenAI completions and chat APIs.

A request names its user in ``user`` (or ``safety_identifier``).  A known user is served by the
personalized policy: the prompt shows the user's profile items nearest the input (from the
profile store), candidates are drawn until the law-guided stopping rule or the budget says
stop, and the run's reward model picks.  A request without a user, or with an unknown one, is
served by the plain policy, picked by the generic score (mean token log-probability), and the
``ttp`` object of the response says so.

``n`` keeps its meaning (choices returned, the best ``n`` by score); ``best_of`` or
``ttp.budget`` (``extra_body={"ttp": {"budget": 8}}`` with the ``openai`` client) caps the
samples.  ``usage`` counts every sample drawn.  Requests run one at a time on the embedded model
(``--concurrency``), waiting in a bounded queue; a full queue answers 503 with ``Retry-After``.

A user's own data: ``GET /v1/ttp/users/{user}/profile`` exports it, ``DELETE /v1/ttp/users/{user}``
erases it (and the retrieval indexes built from it in this process), both within the key's scope.
The limits (requests and feedback a minute, per user and per key) are counted in the profile
store, so that workers sharing one store share them.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ttp.personalize import PLAIN_SELECTOR, Personalizer
from ttp.policy import SCORE, ContextOverflow, SamplingParams
from ttp.runs.results import read_diagnoses
from ttp.serve.auth import Key, KeyFile, KeyRefused
from ttp.serve.config import ServeConfig
from ttp.serve.requests import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    ScoreRequest,
    TTPOptions,
    validated,
)
from ttp.serve.store import ProfileStore, StoreUnavailable
from ttp.tasks.data import Query
from ttp.tasks.prompts import profile_for, retrieve


def _error_response(err: APIError) -> JSONResponse:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return JSONResponse({"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}},
                        status_code=err.status, headers=err.headers)


@dataclass(frozen=True)
class Job:
    """One validated request, as the worker thread needs it."""
    id: str
    input: str
    user: str | None              # a user the store knows; None is served by the plain policy
    asked_user: str | None
    n: int
    budget: int
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    return_profile: bool


class Server:
    """The warm state behind the app: personalizer (backend, encoder, reward model), store, metrics."""

    def __init__(self, personalizer: Personalizer, store: ProfileStore, config: ServeConfig = ServeConfig(),
                 keys: KeyFile | None = None):
        self.personalizer, self.store, self.config, self.keys = personalizer, store, config, keys
        self.gate = asyncio.Semaphore(config.concurrency)
        self.waiting = 0
        folder, task, policy = personalizer.folder, personalizer.task.name, personalizer.policy
        self.collapsed_users = set()
        if folder.diagnosis(task, policy).exists():
            diagnosis = read_diagnoses(folder, task, policy).get(str(personalizer.selector))
            self.collapsed_users = {str(c["user"]) for c in diagnosis.collapsed_users} if diagnosis else set()
        self.registry = CollectorRegistry()
        self.requests = Counter("ttp_requests", "requests answered", ["endpoint", "status"], registry=self.registry)
        self.samples = Counter("ttp_samples_drawn", "candidates sampled", registry=self.registry)
        self.latency = Histogram("ttp_request_latency_seconds", "time to answer", ["endpoint"],
                                 buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue = Gauge("ttp_queue_depth", "requests waiting or running", registry=self.registry)

    # ---- the work of one request, run in a worker thread --------------------------------------
    def personalize(self, job: Job) -> dict:
        cfg = self.personalizer.config
        user, text, n, budget, sampling = job.user, job.input, job.n, job.budget, job.sampling
        input_tokens = self.personalizer.count_tokens(text)
        if input_tokens + sampling.max_tokens > cfg.engine.n_ctx:
            raise APIError(400, f"the input of {input_tokens} tokens and {sampling.max_tokens} new tokens exceed "
                                f"the context of {cfg.engine.n_ctx} tokens; shorten the input", "prompt",
                           "context_length_exceeded")
        query = self.query(job.id, user, text)
        try:
            generation = self.personalizer.generate(query, budget, self.config.min_gain, at_least=n, sampling=sampling)
        except ContextOverflow as err:
            raise APIError(400, str(err), "max_tokens", "context_length_exceeded") from None
        decision, completions, personalized = generation.decision, generation.completions, generation.personalized
        scores, prompt_tokens, reason = np.asarray(decision.scores), generation.prompt_tokens, decision.stopped_because
        mean, sd = (_finite(decision.mean), _finite(decision.sd)) if personalized else (None, None)
        shown = {}       # retrieval is repeated only for a request that asks what the prompt showed
        if job.return_profile:
            shown["retrieved_profile_items"] = [item.id for item in retrieve(query, cfg.shots, cfg.convention)] \
                if personalized else []
        order = np.argsort(-scores, kind="stable")[:n]
        picks = [completions[i] for i in order]
        self.samples.inc(len(completions))
        completion_tokens = sum(c.n_tokens for c in completions)
        return {
            "picks": [{"text": c.text, "finish_reason": c.finish_reason or
                       ("length" if c.n_tokens >= sampling.max_tokens else "stop")} for c in picks],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "ttp": {"user": user, "personalized": personalized, "budget": budget, "samples": len(completions),
                    "stopped_because": reason, "rule": self.personalizer.rule if personalized else "uniform",
                    "selector": str(self.personalizer.selector) if personalized else PLAIN_SELECTOR,
                    "chosen": {"score": float(scores[order[0]]), "mean": mean, "sd": sd},
                    "scores": [float(s) for s in scores], "candidates": [c.text for c in completions],
                    "candidate_tokens": [c.n_tokens for c in completions],
                    **shown,
                    "collapsed_user": personalized and (user in self.collapsed_users
                                                        or reason.startswith("collapsed"))},
        }

    def query(self, request_id: str, user: str | None, text: str) -> Query:
        """The request as a query: the user's profile from the store, less any item written for
        this very input (``profile_for``); a user the store does not know has none."""
        profile = profile_for(self.store.profile(user), text) if user else ()
        return Query(request_id, user or "", text, profile, gold="")

    def score(self, request: ScoreRequest, user: str | None) -> dict:
        """``POST /v1/ttp/score``: the pick's scores of given candidates, run in a worker thread;
        ``user`` is the request's user where the store knows them, else None."""
        query = self.query(uuid.uuid4().hex, user, request.input)
        given = request.has_logprobs
        if not given and not self.personalizer.backend.can(SCORE):
            raise APIError(400, f"the {self.personalizer.backend.name} backend cannot score a given text: send "
                                f"each candidate's logprob and n_tokens as sampled", "candidates")
        ratings = self.personalizer.rate(query, [c.text for c in request.candidates],
                                         [c.logprob for c in request.candidates] if given else None,
                                         [c.n_tokens for c in request.candidates] if given else None)
        blank = [None] * len(ratings.score)
        rows = zip(ratings.score, ratings.mean or blank, ratings.sd or blank)
        return {"object": "list", "model": self.config.model_name, "selector": ratings.selector,
                "personalized": ratings.mean is not None,
                "data": [{"object": "ttp.score", "index": i, "score": score, "mean": _finite(mean), "sd": _finite(sd)}
                         for i, (score, mean, sd) in enumerate(rows)]}

    # ---- who asks -----------------------------------------------------------------------------
    def caller(self, request: Request) -> Key | None:
        """The request's key (None where the server runs without keys); 401 without a valid one."""
        if self.keys is None:
            return None
        try:
            return self.keys.find(request.headers.get("authorization"))
        except KeyRefused as refused:
            raise APIError(401, str(refused), code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}) from None

    async def limit(self, bucket: str, per_minute: int, what: str, user: str | None, key: Key | None) -> None:
        """429 with ``Retry-After`` once the user or the key has had ``per_minute`` of ``bucket``
        in the last minute, counted across every worker on the store."""
        wait = await run_in_threadpool(self.store.take, bucket, per_minute, user, key.name if key else None)
        if wait:
            seconds = math.ceil(wait)
            raise APIError(429, f"at most {per_minute} {what} a minute per user and per key; retry in {seconds} s",
                           code="rate_limited", headers={"Retry-After": str(seconds)})

    @staticmethod
    def check_scope(key: Key | None, user: str | None) -> None:
        """403 for a user outside the key's scope, the same whether or not the user exists."""
        if key is not None and user is not None and not key.may_act_for(user):
            raise APIError(403, f"this API key ({key.name}) may not act for that user", "user", "user_not_in_scope")

    def check_model(self, model: str) -> None:
        if model != self.config.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves "
                                f"{self.config.model_name!r} (GET /v1/models)", "model", "model_not_found")

    # ---- parsing ------------------------------------------------------------------------------
    def parse(self, body, chat: bool) -> Job:
        request = validated(ChatCompletionRequest if chat else CompletionRequest, body)
        self.check_model(request.model)
        if not request.text.strip():
            raise APIError(400, "the input text is empty", "messages" if chat else "prompt")
        n = request.n or 1
        options = request.ttp or TTPOptions()
        budget = options.budget or request.samples_asked or max(self.config.default_budget, n)
        if budget < n:
            raise APIError(400, f"best_of (the sample budget, {budget}) must be at least n ({n})", "best_of")
        run = self.personalizer.config.sampling
        asked = request.asked_user
        asked_sampling = {"max_tokens": request.token_limit, "temperature": request.temperature,
                          "top_p": request.top_p, "seed": request.seed}
        sampling = run.model_copy(update={key: value for key, value in asked_sampling.items() if value is not None})
        known = asked if asked and self.store.has_user(asked) else None
        return Job(id=uuid.uuid4().hex, input=request.text, user=known, asked_user=asked, n=n, budget=budget,
                   sampling=sampling, stream=bool(request.stream),
                   include_usage=bool(request.stream_options and request.stream_options.include_usage),
                   return_profile=bool(options.return_profile))

    async def admit(self, work):
        """Run ``work`` in a thread once the gate lets it in; refuse at once when the queue is full."""
        if self.waiting >= self.config.concurrency + self.config.max_queue:
            raise APIError(503, "the server is busy: the queue is full; retry shortly", code="overloaded",
                           headers={"Retry-After": "2"})
        self.waiting += 1
        self.queue.set(self.waiting)
        try:
            async with self.gate:
                return await run_in_threadpool(work)
        finally:
            self.waiting -= 1
            self.queue.set(self.waiting)


def _finite(value: float | None) -> float | None:
    """A number for JSON: NaN (a model without an sd) is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _chunks(kind: str, head: dict, result: dict, include_usage: bool):
    """Server-sent events of an already chosen answer: one id, role first (chat), usage last."""
    def event(choices, usage=None):
        data = {**head, "choices": choices}
        if usage is not None:
            data["usage"] = usage
        if choices and choices[-1].get("finish_reason"):
            data["ttp"] = result["ttp"]
        return f"data: {json.dumps(data)}\n\n"

    for i, pick in enumerate(result["picks"]):
        if kind == "chat":
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            yield event([{"index": i, "delta": {"content": pick["text"]}, "finish_reason": None}])
            yield event([{"index": i, "delta": {}, "finish_reason": pick["finish_reason"]}])
        else:
            yield event([{"index": i, "text": pick["text"], "logprobs": None, "finish_reason": None}])
            yield event([{"index": i, "text": "", "logprobs": None, "finish_reason": pick["finish_reason"]}])
    if include_usage:
        yield event([], result["usage"])
    yield "data: [DONE]\n\n"


PER_CANDIDATE = ("candidates", "scores", "candidate_tokens", "retrieved_profile_items")


def _summary(meta: dict) -> str:
    """The ``ttp`` object without its per-candidate lists, as one ASCII JSON header: clients that
    keep only the standard fields of a body (LangChain) still show it, with their response headers."""
    return json.dumps({k: v for k, v in meta.items() if k not in PER_CANDIDATE}, separators=(",", ":"))


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="ttp serve", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        start = time.monotonic()
        try:
            response = await call_next(request)
        except Exception as err:  # noqa: BLE001 - every failure answers in the API's own shape
            response = _error_response(APIError(500, f"internal error: {type(err).__name__}: {err}"))
        response.headers["x-request-id"] = rid
        endpoint = request.url.path
        server.requests.labels(endpoint, str(response.status_code)).inc()
        server.latency.labels(endpoint).observe(time.monotonic() - start)
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return _error_response(err)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, err: StoreUnavailable):
        return _error_response(APIError(503, str(err), code="store_unavailable", headers={"Retry-After": "1"}))

    async def body_of(request: Request):
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON ({err})") from None

    async def answer(request: Request, kind: str):
        key = server.caller(request)
        parsed = server.parse(await body_of(request), chat=kind == "chat")
        server.check_scope(key, parsed.asked_user)
        # a user the store does not know is counted by the key alone: no row names an erased user again
        await server.limit("requests", server.config.requests_per_minute, "requests", parsed.user, key)
        result = await server.admit(lambda: server.personalize(parsed))
        if parsed.asked_user and not parsed.user:
            result["ttp"]["stopped_because"] += f" (user {parsed.asked_user!r} is unknown)"
        head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{parsed.id}",
                "object": "chat.completion.chunk" if kind == "chat" and parsed.stream else
                ("chat.completion" if kind == "chat" else "text_completion"),
                "created": int(time.time()), "model": server.config.model_name}
        headers = {"x-ttp": _summary(result["ttp"])}
        if parsed.stream:
            return StreamingResponse(_chunks(kind, head, result, parsed.include_usage),
                                     media_type="text/event-stream", headers=headers)
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": p["text"]}, "logprobs": None,
                        "finish_reason": p["finish_reason"]} for i, p in enumerate(result["picks"])]
        else:
            choices = [{"index": i, "text": p["text"], "logprobs": None, "finish_reason": p["finish_reason"]}
                       for i, p in enumerate(result["picks"])]
        return JSONResponse({**head, "choices": choices, "usage": result["usage"], "ttp": result["ttp"]},
                            headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, "chat")

    @app.get("/v1/models")
    async def models(request: Request):
        server.caller(request)
        return {"object": "list", "data": [{"id": server.config.model_name, "object": "model", "created": 0,
                                            "owned_by": "ttp"}]}

    @app.get("/health")
    async def health():
        keys = {} if server.keys is None else {"key_file": server.keys.problem or "ok"}
        return {"status": "ok", "queue_depth": server.waiting, **keys}

    @app.get("/metrics")
    async def metrics(request: Request):
        key = server.caller(request)
        if key is not None and not key.every_user:
            raise APIError(403, f"this API key ({key.name}) may not read the metrics; an every-user key may",
                           code="not_permitted")
        return PlainTextResponse(generate_latest(server.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/ttp/score")
    async def score(request: Request):
        key = server.caller(request)
        asked = validated(ScoreRequest, await body_of(request))
        if asked.model is not None:
            server.check_model(asked.model)
        server.check_scope(key, asked.user)
        known = asked.user if await run_in_threadpool(server.store.has_user, asked.user) else None
        await server.limit("requests", server.config.requests_per_minute, "requests", known, key)
        return await server.admit(lambda: server.score(asked, known))

    @app.post("/v1/ttp/feedback")
    async def feedback(request: Request):
        key = server.caller(request)
        said = validated(FeedbackRequest, await body_of(request))
        server.check_scope(key, said.user)
        size, limit = len(said.input) + len(said.output), server.config.max_feedback_chars
        if size > limit:
            raise APIError(413, f"a feedback item holds at most {limit} characters of input and output, got {size}",
                           "output", "feedback_too_large")
        await server.limit("feedback", server.config.feedback_per_minute, "feedback items", said.user, key)
        items = await run_in_threadpool(server.store.add_feedback, said.user, said.input, said.output, said.rating,
                                        key.name if key else None)
        return {"object": "ttp.feedback", "user": said.user, "profile_items": items}

    # a user id may hold "/" (sent as %2F): the path converter takes it whole
    @app.get("/v1/ttp/users/{user:path}/profile")
    async def export_user(request: Request, user: str):
        key = server.caller(request)
        server.check_scope(key, user)
        record = await run_in_threadpool(server.store.user_record, user)
        if record is None:
            raise APIError(404, "the store holds no data of this user", "user", "user_not_found")
        return {"object": "ttp.user", **record}

    @app.delete("/v1/ttp/users/{user:path}")
    async def erase_user(request: Request, user: str):
        key = server.caller(request)
        server.check_scope(key, user)
        erased = await run_in_threadpool(server.store.erase_user, user)
        server.personalizer.forget_requests()
        if erased is None:
            raise APIError(404, "the store holds no data of this user", "user", "user_not_found")
        return {"id": user, "object": "ttp.user", "deleted": True, **erased}

    return app
