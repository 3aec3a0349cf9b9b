"""The rule expression language: a small, safe subset of Python syntax compiled to numpy.

An expression is parsed with :mod:`ast` (never evaluated) and every node is checked against
a whitelist, then turned into a tree of closures that compute one numpy array for a whole
batch of rows::

    pm2_5 > 75 and not (flag in ["D", "M"])
    abs(speed_kmh - 60) >= 20 or bit(alarm, 0)
    max(max_cell_v, 0) - min_cell_v > 0.3

Allowed: numbers, strings, ``True``/``False``, column names, ``+ - * / %``, unary ``-``,
comparisons (chains too), ``and``/``or``/``not``, ``in``/``not in`` a literal list,
``abs(x)``, ``min(a, b, …)``/``max(a, b, …)`` (element-wise), ``bit(x, n)`` (bit ``n`` of an
integer column is set). Anything else (attributes, subscripts, calls of other names,
lambdas, comprehensions…) is an ``ExprError`` naming the offending piece and its column.
A NULL value is NaN in arithmetic and makes a comparison false.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Columns = Mapping[str, npt.NDArray[Any]]
Compiled = Callable[[Columns], npt.NDArray[Any]]

_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
FUNCTIONS = ("abs", "min", "max", "bit")


class ExprError(ValueError):
    """An expression that is not in the language; says what and where (1-based column)."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(f"{message} (at column {column})" if column else message)
        self.column = column


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: ``evaluate(columns)`` gives one value per row."""

    source: str
    names: frozenset[str]
    _fn: Compiled

    def evaluate(self, columns: Columns) -> npt.NDArray[Any]:
        """The expression over whole columns (broadcast to the rows' length)."""
        out = np.asarray(self._fn(columns))
        if out.ndim == 0:
            n = len(next(iter(columns.values()))) if columns else 1
            out = np.full(n, out[()])
        return out

    def mask(self, columns: Columns) -> npt.NDArray[np.bool_]:
        """The expression as a condition: true rows (NaN counts as false)."""
        return np.asarray(self.evaluate(columns), dtype=bool)


def compile_expr(source: str, columns: Iterable[str] | None = None) -> Expression:
    """Parse and check ``source``; ``columns`` (if given) are the only names allowed (an
    entry ending in ``*`` allows every name with that prefix, e.g. ``install_*``)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error: {exc.msg}", exc.offset) from None
    known = frozenset(columns) if columns is not None else None
    names: set[str] = set()
    fn = _Compiler(known, names).visit(tree.body)
    return Expression(source, frozenset(names), fn)


def _col(node: ast.AST) -> int:
    return getattr(node, "col_offset", -1) + 1


def _as_float(value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return value.astype(np.float64) if value.dtype.kind in "iub" else value


class _Compiler:
    def __init__(self, known: frozenset[str] | None, names: set[str]) -> None:
        self.known = known
        self.names = names
        self.prefixes = tuple(k[:-1] for k in known or () if k.endswith("*"))

    def _allowed(self, name: str) -> bool:
        assert self.known is not None
        return name in self.known or any(
            name.startswith(p) and len(name) > len(p) for p in self.prefixes
        )

    def visit(self, node: ast.AST) -> Compiled:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise ExprError(f"{type(node).__name__.lower()} is not allowed", _col(node))
        fn: Compiled = method(node)
        return fn

    def _Constant(self, node: ast.Constant) -> Compiled:  # noqa: N802
        value = node.value
        if isinstance(value, str):
            raw = np.bytes_(value.encode())
            return lambda cols: np.asarray(raw)
        if isinstance(value, bool | int | float):
            const = np.asarray(value)
            return lambda cols: const
        raise ExprError(f"constant {value!r} is not allowed", _col(node))

    def _Name(self, node: ast.Name) -> Compiled:  # noqa: N802
        name = node.id
        if name in ("True", "False"):
            const = np.asarray(name == "True")
            return lambda cols: const
        if self.known is not None and not self._allowed(name):
            raise ExprError(
                f"unknown column {name!r} (known: {', '.join(sorted(self.known))})", _col(node)
            )
        self.names.add(name)
        return lambda cols: cols[name]

    def _UnaryOp(self, node: ast.UnaryOp) -> Compiled:  # noqa: N802
        inner = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda cols: np.logical_not(np.asarray(inner(cols), dtype=bool))
        if isinstance(node.op, ast.USub):
            return lambda cols: np.negative(_as_float(np.asarray(inner(cols))))
        if isinstance(node.op, ast.UAdd):
            return inner
        raise ExprError(f"operator {type(node.op).__name__} is not allowed", _col(node))

    def _BinOp(self, node: ast.BinOp) -> Compiled:  # noqa: N802
        op = _ARITH.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed", _col(node))
        left, right = self.visit(node.left), self.visit(node.right)

        def arith(cols: Columns) -> npt.NDArray[Any]:
            a, b = _as_float(np.asarray(left(cols))), _as_float(np.asarray(right(cols)))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.asarray(op(a, b))

        return arith

    def _BoolOp(self, node: ast.BoolOp) -> Compiled:  # noqa: N802
        parts = [self.visit(v) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

        def boolean(cols: Columns) -> npt.NDArray[Any]:
            out = np.asarray(parts[0](cols), dtype=bool)
            for p in parts[1:]:
                out = combine(out, np.asarray(p(cols), dtype=bool))
            return out

        return boolean

    def _Compare(self, node: ast.Compare) -> Compiled:  # noqa: N802
        steps: list[Compiled] = []
        left = self.visit(node.left)
        if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            if len(node.ops) > 1:
                raise ExprError("'in' cannot be chained with other comparisons", _col(node))
            return self._membership(left, node.comparators[0], isinstance(node.ops[0], ast.NotIn))
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise ExprError(f"comparison {type(op).__name__} is not allowed", _col(node))
            right = self.visit(right_node)
            steps.append(self._compare(fn, left, right))
            left = right

        def chain(cols: Columns) -> npt.NDArray[Any]:
            out = np.asarray(steps[0](cols), dtype=bool)
            for s in steps[1:]:
                out = np.logical_and(out, s(cols))
            return out

        return chain

    @staticmethod
    def _compare(fn: Callable[[Any, Any], Any], left: Compiled, right: Compiled) -> Compiled:
        def compare(cols: Columns) -> npt.NDArray[Any]:
            with np.errstate(invalid="ignore"):
                return np.asarray(fn(np.asarray(left(cols)), np.asarray(right(cols))))

        return compare

    def _membership(self, left: Compiled, node: ast.expr, negate: bool) -> Compiled:
        if not isinstance(node, ast.List | ast.Tuple):
            raise ExprError('\'in\' needs a literal list, e.g. flag in ["D", "M"]', _col(node))
        values = []
        for elt in node.elts:
            if not isinstance(elt, ast.Constant) or isinstance(elt.value, bytes):
                raise ExprError("list items must be numbers or strings", _col(elt))
            values.append(elt.value.encode() if isinstance(elt.value, str) else elt.value)
        wanted = np.asarray(values)

        def member(cols: Columns) -> npt.NDArray[Any]:
            found = np.isin(np.asarray(left(cols)), wanted)
            return np.logical_not(found) if negate else found

        return member

    def _Call(self, node: ast.Call) -> Compiled:  # noqa: N802
        if not isinstance(node.func, ast.Name):
            self.visit(node.func)  # refuses attributes, subscripts…
            raise ExprError("only abs, min, max and bit can be called", _col(node))
        if node.func.id not in FUNCTIONS:
            raise ExprError(
                f"function {node.func.id!r} is not allowed (only {', '.join(FUNCTIONS)})",
                _col(node),
            )
        if node.keywords:
            raise ExprError("keyword arguments are not allowed", _col(node))
        name = node.func.id
        args = [self.visit(a) for a in node.args]
        want = {"abs": (1, 1), "bit": (2, 2), "min": (2, 99), "max": (2, 99)}[name]
        if not want[0] <= len(args) <= want[1]:
            raise ExprError(f"{name}() takes {want[0]} argument(s)", _col(node))
        if name == "abs":
            return lambda cols: np.abs(_as_float(np.asarray(args[0](cols))))
        if name == "bit":
            return lambda cols: (
                np.right_shift(np.asarray(args[0](cols)).astype(np.int64), args[1](cols)) & 1
            ).astype(bool)
        reduce = np.minimum if name == "min" else np.maximum  # NULL (NaN) propagates

        def extreme(cols: Columns) -> npt.NDArray[Any]:
            out = _as_float(np.asarray(args[0](cols)))
            for a in args[1:]:
                out = reduce(out, _as_float(np.asarray(a(cols))))
            return out

        return extreme
