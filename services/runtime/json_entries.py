"""JSON lists of typed entries in one variable (the model registries), validated by
pydantic; every problem is reported as a ConfigError naming the entry and the field,
e.g. `LLMMESH_CHAT_MODELS[0].base_url is required`. Input values are never echoed:
an entry may hold a key.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, StrictInt, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

from services.runtime.config import ConfigError

Entry = TypeVar("Entry", bound=BaseModel)

# What a failure of each kind says about the value, after its location.
_PHRASES = {
    "json_invalid": "is not valid JSON: {error}",
    "list_type": "must be a JSON list",
    "model_type": "must be an object",
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}",
}
_PYDANTIC_ERRORS = frozenset(get_args(ErrorType))


def _positive(value: int) -> int:
    if value < 1:
        raise PydanticCustomError("positive_integer", "must be a positive integer")
    return value


# An integer >= 1; lax, as pydantic reads `int` (also "5" or true).
PositiveInteger = Annotated[int, AfterValidator(_positive)]
# An integer >= 1 written as a JSON number (not a string, not a boolean).
StrictPositiveInteger = Annotated[StrictInt, AfterValidator(_positive)]


def parse_entries(variable: str, raw: str, entry: type[Entry]) -> list[Entry]:
    """The JSON list in `variable` (its value `raw`), each item validated as `entry`."""
    try:
        # pydantic needs the runtime type list[entry]; mypy cannot read a variable's value
        # as a type, though the result is the list[Entry] it infers.
        return TypeAdapter(list[entry]).validate_json(raw)  # type: ignore[valid-type]
    except ValidationError as error:
        raise ConfigError("; ".join(describe(variable, error))) from None


def describe(variable: str, error: ValidationError) -> list[str]:
    """One sentence per problem; an entry's unknown keys are listed together."""
    problems: list[str] = []
    unknown: dict[str, list[str]] = {}
    for detail in error.errors(include_url=False, include_input=False):
        loc = detail["loc"]
        if detail["type"] == "extra_forbidden":
            unknown.setdefault(_where(variable, loc[:-1]), []).append(str(loc[-1]))
        else:
            problems.append(_sentence(_where(variable, loc), detail))
    problems += [f"{where} has unknown keys {sorted(keys)}" for where, keys in unknown.items()]
    return problems


def _where(variable: str, loc: tuple[int | str, ...]) -> str:
    return variable + "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                              for part in loc)


def _sentence(where: str, detail: ErrorDetails) -> str:
    context: dict[str, Any] = dict(detail.get("ctx") or {})
    if detail["type"] == "value_error":  # a model validator's own sentence
        return f"{where}: {context['error']}"
    phrase = _PHRASES.get(detail["type"])
    if phrase is not None:
        return f"{where} {phrase.format(**context)}"
    if detail["type"] in _PYDANTIC_ERRORS:
        return f"{where}: {detail['msg']}"
    return f"{where} {detail['msg']}"  # our own errors are phrased to follow the location
