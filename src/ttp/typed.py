"""The base of every typed configuration object (``Settings``: frozen, no unknown field, each
field's default, bounds and help written once on the field) and how a refused value is said in
one line (``refusal``), the same from the command line and from a saved ``config.json``."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError


def _shares(split: tuple[float, float, float]) -> tuple[float, float, float]:
    if min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
        raise ValueError("must be three positive shares (train, validation, test) summing to 1")
    return split


# the users' train, validation and test shares, which a run, its tune and a matrix must agree on
Split = Annotated[tuple[float, float, float], AfterValidator(_shares)]


def one_of(names) -> type:
    """The type of a ``str`` field that must name one of ``names``, a registry read when a value
    is checked (so a choice registered later is accepted)."""
    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"must be one of {sorted(names)}")
        return value

    return Annotated[str, AfterValidator(check)]


class Settings(BaseModel):
    """A configuration object, checked when built; ``changed(**fields)`` is a checked copy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def changed(self, **fields) -> "Settings":
        """A copy with ``fields`` replaced, checked as the original was (``model_copy`` is not)."""
        return type(self).model_validate({**dict(self), **fields})


def refusal(err: ValidationError) -> tuple[str, str]:
    """The first refused field's dotted name ('' for a rule across fields) and why, in one line."""
    first = err.errors()[0]
    where = ".".join(map(str, first["loc"]))
    reason = first["msg"].removeprefix("Value error, ")
    return where, f"{reason} (got {first.get('input')!r})" if where else reason


def flags(*names: str) -> dict:
    """A field's option names where they are not ``--field-name`` (the first is the one shown):
    ``Field(..., json_schema_extra=flags("--pool-size"))``."""
    return {"flags": names}
