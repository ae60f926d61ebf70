"""Typed configuration models become command-line options: ``@model_options(EngineConfig, "engine")``
adds one option per field of the model to a typer command (its name, default, bounds and help
from the field) and hands the command one validated model in the parameter ``engine``.

Written here rather than taken from a library: typer builds options from a function's signature
alone, and the pydantic-to-CLI packages (pydantic-settings' CLI among them) parse ``sys.argv``
themselves, outside typer's commands, help and one-line errors."""
from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Literal, Optional, Union

import typer
from pydantic import BaseModel, ValidationError

from ttp.typed import refusal

PREFIX = "option__"        # a generated parameter's name: never one a command spells itself


def option_names(name: str, field) -> tuple[str, ...]:
    """A field's option names: its ``flags`` where it declares some, else ``--field-name``."""
    return tuple((field.json_schema_extra or {}).get("flags", ())) or ("--" + name.replace("_", "-"),)


def _cli_type(annotation):
    """The type typer parses: ``Optional[X]`` for ``X | None``, ``str`` for a ``Literal`` of strings."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return Optional[_cli_type(inner[0])]
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation


def _bounds(field) -> str:
    said = []
    for rule in field.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(rule, attr, None) is not None:
                said.append(f"{word} {getattr(rule, attr)}")
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else ()
    # choices in parentheses: the help is rich markup, which takes "[one of: ...]" for a tag and drops it
    return (f" [{', '.join(said)}]" if said else "") + (f" (one of: {', '.join(choices)})" if choices else "")


def field_option(model: type[BaseModel], name: str):
    """The option of one field of ``model``, for a command that builds the model itself: its
    names, default, and help with its bounds, as ``model_options`` makes them."""
    field = model.model_fields[name]
    return typer.Option(field.default, *option_names(name, field), help=(field.description or "") + _bounds(field))


def model_options(model: type[BaseModel], into: str, exclude: tuple[str, ...] = ()):
    """Decorate a typer command whose parameter ``into`` is a ``model``: the command gets one option
    per field of ``model`` (but ``exclude``) instead, and ``into`` the model they build.  A value
    the model refuses stops with the option's name and the model's reason."""
    fields = {name: field for name, field in model.model_fields.items() if name not in exclude}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != into]
        added = [inspect.Parameter(PREFIX + name, inspect.Parameter.KEYWORD_ONLY,
                                   annotation=_cli_type(field.annotation),
                                   default=field_option(model, name))
                 for name, field in fields.items()]

        @functools.wraps(command)
        def run(**values):
            settings = {name: values.pop(PREFIX + name) for name in fields}
            try:
                values[into] = model(**settings)
            except ValidationError as err:
                where, why = refusal(err)
                name = where.split(".")[0]
                shown = option_names(name, fields[name])[0] if name in fields else into
                raise typer.BadParameter(f"{shown}: {why}") from None
            return command(**values)

        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept]
        run.__signature__ = signature.replace(parameters=keyword + added)
        run.__annotations__ = {p.name: p.annotation for p in keyword + added}
        del run.__wrapped__          # typer reads the signature above, not the command's own
        return run

    return decorate
