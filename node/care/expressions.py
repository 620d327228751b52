"""FHIRPath conditions for care rules and pathway actions: parsed strictly at load, evaluated
purely.

``fhirpathpy`` (the maintained Python FHIRPath engine) recovers silently from syntax errors and
only reports an unknown function when it is called, and it annotates the resource it evaluates.
So this module parses with a listener that raises, requires the whole text to be one expression,
checks every function name against the engine's table at load time, refuses the clock functions
(``now()``, ``today()``, ``timeOfDay()`` — a rule gets the time as ``%now``, so it stays a pure
function of its inputs). (Its README says evaluation annotates the input resource; 2.2.4 does
not — the engine's property test checks that inputs come back untouched.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as fp_compile
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.models import models
from fhirpathpy.parser import parse as fp_parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = ["Expression", "ExpressionError", "compile_expression"]

CLOCK_FUNCTIONS = frozenset({"now", "today", "timeOfDay"})
R4_MODEL = models["r4"]


class ExpressionError(ValueError):
    """A FHIRPath text that does not parse, or calls a function that does not exist."""


class _Raise(ErrorListener):  # type: ignore[misc]
    def syntaxError(self, recognizer, offending, line, column, msg, e):  # noqa: N802, ANN001
        raise ExpressionError(f"column {column + 1}: {msg}")


def _check_syntax(text: str) -> None:
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Raise())
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(_Raise())
    parser.expression()
    rest = stream.LT(1)
    if rest is not None and rest.type != Token.EOF:
        raise ExpressionError(f"column {rest.column + 1}: unexpected {rest.text!r} after the end")


def _function_names(node: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    if node.get("type") == "Functn":
        ident = next((c for c in node.get("children", []) if c.get("type") == "Identifier"), None)
        if ident is not None:
            names.append(str(ident.get("text")))
    for child in node.get("children", []) or []:
        names.extend(_function_names(child))
    return names


@dataclass(frozen=True)
class Expression:
    """A checked FHIRPath expression; call :meth:`evaluate` on a resource."""

    text: str
    _fn: Any = field(repr=False, compare=False)

    def evaluate(self, resource: Mapping[str, Any], variables: Mapping[str, Any]) -> list[Any]:
        """The result collection."""
        return list(self._fn(resource, dict(variables)))

    def is_true(self, resource: Mapping[str, Any], variables: Mapping[str, Any]) -> bool:
        """FHIRPath boolean evaluation: exactly ``[True]`` is true; empty or false is not."""
        return self.evaluate(resource, variables) == [True]


def compile_expression(text: str) -> Expression:
    """Check and compile ``text``; :class:`ExpressionError` says why it is refused."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("empty FHIRPath expression")
    _check_syntax(text)
    for name in _function_names(fp_parse(text)):
        if name in CLOCK_FUNCTIONS:
            raise ExpressionError(f"{name}() reads the clock; use %now so the rule stays pure")
        if name not in invocation_registry:
            raise ExpressionError(f"unknown FHIRPath function {name}()")
    return Expression(text, fp_compile(text, R4_MODEL))
