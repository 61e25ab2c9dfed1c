"""Tools for `gen(tools=...)`: OpenAI schemas from Python functions, argument validation and calls.

A tool is a Python function (its schema comes from the signature: `str`, `int`, `float`, `bool`,
`list[...]`, `dict`, `Literal[...]`, `Optional[...]`, and `Annotated[T, "description",
{"minimum": 1, ...}]` for descriptions and JSON-schema constraints), an OpenAI tool dict (no
implementation: its calls are handed back to the program), or a `Tool` pairing both.
A call never raises: bad JSON, arguments that break the schema and exceptions in the function
all become the result text the model reads.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


@dataclass
class Tool:
    schema: dict[str, Any]  # {"type": "function", "function": {"name", "description", "parameters"}}
    fn: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]

    def call(self, arguments: str) -> str:
        """The result text of calling the function with the model's JSON `arguments`."""
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return f"Error: the arguments of {self.name} are not valid JSON ({exc.msg}): {arguments}"
        errors = validate(args, self.schema["function"].get("parameters") or {"type": "object"}, "arguments")
        if errors:
            return f"Error: invalid arguments for {self.name}: " + "; ".join(errors)
        try:
            result = self.fn(**args)
        except Exception as exc:  # the model reads the failure and may retry
            return f"Error: {type(exc).__name__}: {exc}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def as_tool(obj: Any) -> Tool:
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, dict):
        if not isinstance(obj.get("function"), dict) or not obj["function"].get("name"):
            raise ValueError(f"a tool dict needs the OpenAI form {{'type': 'function', 'function': {{'name': ...}}}}, "
                             f"got {obj!r}")
        return Tool({"type": "function", **obj})
    if callable(obj):
        return Tool(function_schema(obj), obj)
    raise TypeError(f"a tool is a function, an OpenAI tool dict or a Tool, got {type(obj).__name__}")


def function_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool schema of `fn`: parameters from the signature, description from the docstring."""
    hints = typing.get_type_hints(fn, include_extras=True)
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__} has *{name}; tools need named parameters")
        properties[name] = type_schema(hints.get(name, Any))
        if param.default is param.empty:
            required.append(name)
    function: dict[str, Any] = {"name": fn.__name__}
    doc = inspect.getdoc(fn)
    if doc:
        function["description"] = doc.split("\n\n")[0]
    function["parameters"] = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": function}


def type_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of a parameter annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return {}
    if origin is Annotated:
        schema = type_schema(args[0])
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
            elif isinstance(extra, dict):
                schema.update(extra)
        return schema
    if origin is Literal:
        kinds = {_JSON_TYPES.get(type(v)) for v in args}
        return {"type": kinds.pop(), "enum": list(args)} if len(kinds) == 1 else {"enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return type_schema(options[0]) if len(options) == 1 else {"anyOf": [type_schema(a) for a in options]}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if annotation is list or origin is list:
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    raise TypeError(f"unsupported tool parameter type {annotation!r}")


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    expected = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
                "object": dict, "null": type(None)}.get(kind)
    return expected is None or isinstance(value, expected)


def validate(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Where `value` breaks `schema` (the JSON-schema keywords tool schemas use), as messages."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds and not any(_is_type(value, k) for k in kinds):
        return [f"{path} must be {' or '.join(kinds)}, got {json.dumps(value)}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path} must be one of {json.dumps(schema['enum'])}, got {json.dumps(value)}")
    if "anyOf" in schema and all(validate(value, option, path) for option in schema["anyOf"]):
        errors.append(f"{path} matches none of the allowed schemas")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, fails in (("minimum", value.__lt__), ("maximum", value.__gt__),
                           ("exclusiveMinimum", value.__le__), ("exclusiveMaximum", value.__ge__)):
            if key in schema and fails(schema[key]):
                errors.append(f"{path} is {value}, outside {key} {schema[key]}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path} has a length outside [{schema.get('minLength', 0)}, {schema.get('maxLength')}]")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path} does not match {schema['pattern']!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{path}.{key} is required" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in properties:
                errors += validate(item, properties[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key} is not a known parameter")
    return errors


def forced_tool_grammar(tools: list[dict], tool_choice: str) -> str:
    """The server's structural tag that forces a DSML tool call of any tool ("required") or of the
    named one, as the native API's `sampling_params["structural_tag"]` takes it."""
    from ..scheduler.grammar import tool_call_grammar  # xgrammar and torch: only when a call is forced

    return tool_call_grammar(tools, required_name=None if tool_choice == "required" else tool_choice).value
