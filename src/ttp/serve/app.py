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
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ttp.personalize import PLAIN_SELECTOR, Personalizer
from ttp.policy import ContextOverflow
from ttp.runs.config import MAX_POOL_SIZE
from ttp.runs.results import read_diagnoses
from ttp.serve.store import ProfileStore
from ttp.tasks.data import Query
from ttp.tasks.prompts import retrieve


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class ServeConfig:
    model_name: str = "ttp"            # the model id clients send and /v1/models lists
    default_budget: int = 8            # samples when a request gives neither best_of nor ttp.budget
    min_gain: float = 1e-3             # the stopping rule's threshold, utility per sample
    concurrency: int = 1               # requests sampled at once (1 for the embedded model)
    max_queue: int = 16                # requests waiting beyond those; more get 503


def _integer(body: dict, key: str, default, low: int, high: int, param: str | None = None):
    value = body.get(key)
    if value is None:   # absent, or null as clients send every optional field they do not set
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(400, f"{param or key} must be a whole number between {low} and {high}, got {value!r}",
                       param or key)
    return value


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(400, f"{key} must be a number between {low} and {high}, got {value!r}", key)
    return float(value)


class Server:
    """The warm state behind the app: personalizer (backend, encoder, reward model), store, metrics."""

    def __init__(self, personalizer: Personalizer, store: ProfileStore, config: ServeConfig = ServeConfig()):
        self.personalizer, self.store, self.config = personalizer, store, config
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
    def personalize(self, request: dict) -> dict:
        cfg = self.personalizer.config
        user, text, n, budget = request["user"], request["input"], request["n"], request["budget"]
        sampling = replace(cfg.sampling, max_tokens=request["max_tokens"], temperature=request["temperature"],
                           top_p=request["top_p"], seed=request["seed"])
        input_tokens = self.personalizer.count_tokens(text)
        if input_tokens + sampling.max_tokens > cfg.engine.n_ctx:
            raise APIError(400, f"the input of {input_tokens} tokens and {sampling.max_tokens} new tokens exceed "
                                f"the context of {cfg.engine.n_ctx} tokens; shorten the input", "prompt",
                           "context_length_exceeded")
        profile = self.store.profile(user) if user else ()
        query = Query(request["id"], user or "", text, profile, gold="")
        try:
            generation = self.personalizer.generate(query, budget, self.config.min_gain, at_least=n, sampling=sampling)
        except ContextOverflow as err:
            raise APIError(400, str(err), "max_tokens", "context_length_exceeded") from None
        decision, completions, personalized = generation.decision, generation.completions, generation.personalized
        scores, prompt_tokens, reason = np.asarray(decision.scores), generation.prompt_tokens, decision.stopped_because
        retrieved = [item.id for item in retrieve(query, cfg.shots, cfg.convention)] if personalized else []
        mean, sd = (decision.mean, decision.sd) if personalized else (None, None)
        order = np.argsort(-scores, kind="stable")[:n]
        picks = [completions[i] for i in order]
        self.samples.inc(len(completions))
        completion_tokens = sum(c.n_tokens for c in completions)
        return {
            "picks": [{"text": c.text, "finish_reason": "length" if c.n_tokens >= sampling.max_tokens else "stop"}
                      for c in picks],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "ttp": {"user": user, "personalized": personalized, "budget": budget, "samples": len(completions),
                    "stopped_because": reason, "rule": self.personalizer.rule if personalized else "uniform",
                    "selector": str(self.personalizer.selector) if personalized else PLAIN_SELECTOR,
                    "chosen": {"score": float(scores[order[0]]), "mean": mean, "sd": sd},
                    "scores": [float(s) for s in scores], "candidates": [c.text for c in completions],
                    "candidate_tokens": [c.n_tokens for c in completions],
                    "retrieved_profile_items": retrieved,
                    "collapsed_user": personalized and (user in self.collapsed_users
                                                        or reason.startswith("collapsed"))},
        }

    # ---- parsing ------------------------------------------------------------------------------
    def parse(self, body: dict, chat: bool) -> dict:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        if body.get("model") != self.config.model_name:
            raise APIError(404, f"the model {body.get('model')!r} does not exist; this server serves "
                                f"{self.config.model_name!r} (GET /v1/models)", "model", "model_not_found")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                raise APIError(400, "messages must be a non-empty list of {role, content} objects", "messages")
            said = [m["content"] for m in messages if m.get("role") == "user"]
            if not said:
                raise APIError(400, "messages hold no user message to answer", "messages")
            text = said[-1]
        else:
            text = body.get("prompt")
            if isinstance(text, list) and len(text) == 1:
                text = text[0]
            if not isinstance(text, str):
                raise APIError(400, "prompt must be one string", "prompt")
        if not text.strip():
            raise APIError(400, "the input text is empty", "prompt")
        user = body.get("user") or body.get("safety_identifier")
        if user is not None and not isinstance(user, str):
            raise APIError(400, "user must be a string", "user")
        n = _integer(body, "n", 1, 1, MAX_POOL_SIZE)
        extra = body.get("ttp") or {}
        if not isinstance(extra, dict):
            raise APIError(400, "ttp must be an object, e.g. {\"budget\": 8}", "ttp")
        best_of = None if chat else _integer(body, "best_of", None, 1, MAX_POOL_SIZE)
        budget = _integer(extra, "budget", None, 1, MAX_POOL_SIZE, "ttp.budget")
        budget = budget or best_of or max(self.config.default_budget, n)
        if budget < n:
            raise APIError(400, f"best_of (the sample budget, {budget}) must be at least n ({n})", "best_of")
        run = self.personalizer.config
        limit = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        options = body.get("stream_options") or {}
        return {"id": uuid.uuid4().hex, "input": text, "user": user if user and self.store.has_user(user) else None,
                "asked_user": user, "n": n, "budget": budget, "stream": bool(body.get("stream")),
                "include_usage": isinstance(options, dict) and bool(options.get("include_usage")),
                "max_tokens": _integer(body, limit, run.sampling.max_tokens, 1, run.engine.n_ctx, limit),
                "temperature": _number(body, "temperature", run.sampling.temperature, 0.0, 2.0),
                "top_p": _number(body, "top_p", run.sampling.top_p, 1e-6, 1.0),
                "seed": _integer(body, "seed", run.sampling.seed, 0, 2**31 - 1)}

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


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="ttp serve", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        start = time.monotonic()
        try:
            response = await call_next(request)
        except Exception as err:  # noqa: BLE001 - every failure answers in the API's own shape
            response = APIError(500, f"internal error: {type(err).__name__}: {err}").response()
        response.headers["x-request-id"] = rid
        endpoint = request.url.path
        server.requests.labels(endpoint, str(response.status_code)).inc()
        server.latency.labels(endpoint).observe(time.monotonic() - start)
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    async def body_of(request: Request):
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON ({err})") from None

    async def answer(request: Request, kind: str):
        parsed = server.parse(await body_of(request), chat=kind == "chat")
        result = await server.admit(lambda: server.personalize(parsed))
        if parsed["asked_user"] and not parsed["user"]:
            result["ttp"]["stopped_because"] += f" (user {parsed['asked_user']!r} is unknown)"
        head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{parsed['id']}",
                "object": "chat.completion.chunk" if kind == "chat" and parsed["stream"] else
                ("chat.completion" if kind == "chat" else "text_completion"),
                "created": int(time.time()), "model": server.config.model_name}
        if parsed["stream"]:
            return StreamingResponse(_chunks(kind, head, result, parsed["include_usage"]),
                                     media_type="text/event-stream")
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": p["text"]}, "logprobs": None,
                        "finish_reason": p["finish_reason"]} for i, p in enumerate(result["picks"])]
        else:
            choices = [{"index": i, "text": p["text"], "logprobs": None, "finish_reason": p["finish_reason"]}
                       for i, p in enumerate(result["picks"])]
        return {**head, "choices": choices, "usage": result["usage"], "ttp": result["ttp"]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, "chat")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.config.model_name, "object": "model", "created": 0,
                                            "owned_by": "ttp"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "queue_depth": server.waiting}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(server.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/ttp/feedback")
    async def feedback(request: Request):
        body = await body_of(request)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        for key in ("user", "input", "output"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                raise APIError(400, f"{key} must be a non-empty string", key)
        rating = body.get("rating")
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))):
            raise APIError(400, "rating must be a number or null", "rating")
        items = await run_in_threadpool(server.store.add_feedback, body["user"], body["input"], body["output"],
                                        rating)
        return {"object": "ttp.feedback", "user": body["user"], "profile_items": items}

    return app
