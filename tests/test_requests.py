"""The typed request models of `ttp serve`: what validates, and the one error a bad body gets."""
import pytest

from ttp.serve.requests import APIError, ChatCompletionRequest, CompletionRequest, FeedbackRequest, validated


def _error(model, body) -> APIError:
    with pytest.raises(APIError) as caught:
        validated(model, body)
    assert caught.value.status == 400
    return caught.value


def test_null_optional_fields_validate_as_unset():
    fields = dict.fromkeys(("n", "best_of", "max_tokens", "temperature", "top_p", "seed", "stream", "stream_options",
                            "ttp", "user", "stop", "logit_bias"))
    request = validated(CompletionRequest, {"model": "ttp", "prompt": "x", **fields})
    assert request.n is None and request.seed is None and request.ttp is None and request.asked_user is None


def test_chat_content_may_be_a_list_of_text_parts():
    request = validated(ChatCompletionRequest, {"model": "ttp", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "first "}, {"type": "text", "text": "part"}]}]})
    assert request.text == "first part"
    assert validated(ChatCompletionRequest, {"model": "ttp", "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": None},
        {"role": "user", "content": "b"}]}).text == "b"


@pytest.mark.parametrize("body, param, message", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.content", "only text parts"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.content", "a string or a list of text parts"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages", "no user message"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"content": "x"}]}, "messages.role", "is required"),
], ids=["image part", "number content", "no user message", "no messages", "no role"])
def test_bad_chat_bodies_name_the_field(body, param, message):
    err = _error(ChatCompletionRequest, {"model": "ttp", **body})
    assert err.param == param and message in err.message


@pytest.mark.parametrize("field, value, message", [
    ("best_of", -3, "best_of must be a whole number between 1 and 64, got -3"),
    ("n", True, "n must be a whole number between 1 and 64, got True"),
    ("n", 2.0, "n must be a whole number"),
    ("seed", 2**40, "seed must be a whole number between 0 and"),
    ("temperature", 3, "temperature must be a number between 0.0 and 2.0, got 3"),
    ("top_p", "high", "top_p must be a number"),
    ("prompt", ["a", "b"], "prompt must be one string"),
    ("ttp", {"budgt": 4}, "ttp.budgt"),
    ("ttp", {"budget": 0}, "ttp.budget must be a whole number between 1 and 64"),
    ("stream", "yes", "stream input should be a valid boolean"),
])
def test_bad_completion_fields_get_one_error_naming_the_field(field, value, message):
    err = _error(CompletionRequest, {"model": "ttp", "prompt": "x", field: value})
    assert message in err.message and err.param.startswith(field)


def test_a_body_that_is_not_an_object_or_lacks_the_model_is_refused():
    assert "JSON object" in _error(CompletionRequest, ["model", "ttp"]).message
    assert _error(CompletionRequest, {"prompt": "x"}).message == "model is required"


def test_feedback_needs_text_and_a_numeric_rating():
    said = validated(FeedbackRequest, {"user": "u", "input": "i", "output": "o", "rating": 1})
    assert (said.user, said.rating) == ("u", 1.0)
    assert _error(FeedbackRequest, {"user": "u", "input": "  ", "output": "o"}).param == "input"
    assert _error(FeedbackRequest, {"user": "u", "input": "i", "output": "o", "rating": False}).param == "rating"


def test_only_completions_take_best_of_as_the_sample_budget():
    chat = validated(ChatCompletionRequest, {"model": "ttp", "messages": [{"role": "user", "content": "x"}],
                                             "best_of": 4})
    assert chat.samples_asked is None
    assert validated(CompletionRequest, {"model": "ttp", "prompt": "x", "best_of": 4}).samples_asked == 4


def test_a_score_request_takes_texts_or_candidates_with_their_logprobs():
    from ttp.serve.requests import ScoreRequest

    texts = validated(ScoreRequest, {"user": "u", "input": "x", "candidates": ["a", "b"]})
    assert [c.text for c in texts.candidates] == ["a", "b"] and not texts.has_logprobs and texts.model is None
    sampled = validated(ScoreRequest, {"user": "u", "input": "x", "model": None, "candidates": [
        {"text": "a", "logprob": -1.5, "n_tokens": 2}, {"text": "b", "logprob": 0, "n_tokens": 1}]})
    assert sampled.has_logprobs and sampled.candidates[0].logprob == -1.5


@pytest.mark.parametrize("body, param, message", [
    ({"candidates": []}, "candidates", "at least 1 item"),
    ({"candidates": ["a"] * 65}, "candidates", "at most 64 items"),
    ({"candidates": [{"text": "a", "logprob": -1, "n_tokens": 1}, "b"]}, "candidates", "every candidate or for none"),
    ({"candidates": [{"text": "a", "logprob": -1}]}, "candidates", "every candidate or for none"),
    ({"candidates": [{"text": "a", "logprob": 2, "n_tokens": 1}]}, "candidates.logprob", "between"),
    ({"candidates": [{"text": "a", "score": 1}]}, "candidates.score", "extra inputs"),
    ({"candidates": ["a"], "user": " "}, "user", "non-empty"),
], ids=["no candidates", "over a pool", "some logprobs", "logprob without tokens", "positive logprob",
        "unknown field", "blank user"])
def test_bad_score_bodies_name_the_field(body, param, message):
    from ttp.serve.requests import ScoreRequest

    err = _error(ScoreRequest, {"user": "u", "input": "x", **body})
    assert err.param == param and message in err.message
