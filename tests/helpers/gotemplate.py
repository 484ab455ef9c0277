"""A small interpreter of Go's text/template, enough to render Ollama chat templates in tests.

Supports text, ``{{- ... -}}`` trimming, ``if``/``else if``/``else``/``end``, ``range`` (with
``$i, $x :=``), variable assignment, fields (``.Role``, ``$.Messages``), string and number
literals, parentheses, and the functions ``eq ne and or not len slice``. Unknown syntax raises,
so a template using more than this fails the test instead of rendering wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|:=|\(|\)|,|[^\s(),]+)')


@dataclass
class _Node:
    kind: str  # text, expr, assign, if, range
    value: Any = None
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """``[("text", ...), ("action", ...)]`` with trim markers applied to the text."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2)))
        if m.group(3):
            rest = source[m.end() :]
            pos = m.end() + (len(rest) - len(rest.lstrip()))
        else:
            pos = m.end()
    parts.append(("text", source[pos:]))
    return [p for p in parts if not (p[0] == "text" and p[1] == "")]


def _tokens(action: str) -> list[str]:
    out = []
    pos = 0
    while pos < len(action):
        m = _TOKEN.match(action, pos)
        if not m or not m.group(1):
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _parse(parts: list[tuple[str, str]], i: int = 0) -> tuple[list[_Node], int, str]:
    """Parse until ``end``/``else``; returns (nodes, next index, the closing action)."""
    nodes: list[_Node] = []
    while i < len(parts):
        kind, content = parts[i]
        i += 1
        if kind == "text":
            nodes.append(_Node("text", content))
            continue
        toks = _tokens(content)
        head = toks[0] if toks else ""
        if head == "end" or head == "else":
            return nodes, i, content
        if head in ("if", "range"):
            node = _Node(head)
            rest = toks[1:]
            if head == "range" and ":=" in rest:
                at = rest.index(":=")
                node.names = [t for t in rest[:at] if t != ","]
                rest = rest[at + 1 :]
            node.value = rest
            i = _parse_branches(node, parts, i)
            nodes.append(node)
            continue
        if len(toks) >= 2 and toks[1] == ":=":
            nodes.append(_Node("assign", toks[2:], names=[toks[0]]))
            continue
        nodes.append(_Node("expr", toks))
    return nodes, i, ""


def _parse_branches(node: _Node, parts: list[tuple[str, str]], i: int) -> int:
    """Body and else branches of an if/range; ``else if`` nests an if sharing the one ``end``."""
    node.body, i, closing = _parse(parts, i)
    words = _tokens(closing)
    if words[:2] == ["else", "if"]:
        inner = _Node("if", words[2:])
        i = _parse_branches(inner, parts, i)
        node.orelse = [inner]
    elif words == ["else"]:
        node.orelse, i, closing = _parse(parts, i)
        if _tokens(closing) != ["end"]:
            raise ValueError(f"expected end, got {closing!r}")
    elif words != ["end"]:
        raise ValueError(f"unterminated {node.kind}")
    return i


class _Scope:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.vars: dict[str, Any] = {"$": root}


def _field(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name)


def _term(tok: str, dot: Any, scope: _Scope) -> Any:
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if tok == ".":
        return dot
    if tok.startswith("."):
        value = dot
        for part in tok[1:].split("."):
            value = _field(value, part)
        return value
    if tok.startswith("$"):
        name, _, path = tok.partition(".")
        value = scope.vars[name]
        for part in path.split(".") if path else []:
            value = _field(value, part)
        return value
    raise ValueError(f"unsupported term {tok!r}")


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": lambda a: len(a),
    "slice": lambda a, *ix: a[ix[0] : ix[1]] if len(ix) > 1 else a[ix[0] :],
}


def _truth(value: Any) -> bool:
    return bool(value)


def _eval(toks: list[str], dot: Any, scope: _Scope) -> Any:
    args, pos = _args(toks, 0, dot, scope)
    if pos != len(toks):
        raise ValueError(f"unparsed tokens {toks[pos:]}")
    return args


def _args(toks: list[str], pos: int, dot: Any, scope: _Scope) -> tuple[Any, int]:
    """Evaluate a command (function call or single term) starting at ``pos``."""
    items: list[Any] = []
    func = toks[pos] if pos < len(toks) and toks[pos] in (*_FUNCS, "and", "or") else None
    if func is not None:
        pos += 1
    while pos < len(toks) and toks[pos] != ")":
        if toks[pos] == "(":
            value, pos = _args(toks, pos + 1, dot, scope)
            if toks[pos] != ")":
                raise ValueError("unbalanced parentheses")
            pos += 1
            items.append(value)
        else:
            items.append(_term(toks[pos], dot, scope))
            pos += 1
    if func == "and":
        result: Any = True
        for item in items:
            result = item
            if not _truth(item):
                break
        return result, pos
    if func == "or":
        result = False
        for item in items:
            result = item
            if _truth(item):
                break
        return result, pos
    if func is not None:
        return _FUNCS[func](*items), pos
    if len(items) != 1:
        raise ValueError(f"cannot evaluate {toks}")
    return items[0], pos


def _render(nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "expr":
            value = _eval(node.value, dot, scope)
            out.append("" if value is None else str(value))
        elif node.kind == "assign":
            scope.vars[node.names[0]] = _eval(node.value, dot, scope)
        elif node.kind == "if":
            branch = node.body if _truth(_eval(node.value, dot, scope)) else node.orelse
            _render(branch, dot, scope, out)
        elif node.kind == "range":
            items = _eval(node.value, dot, scope) or []
            if not items:
                _render(node.orelse, dot, scope, out)
            for index, item in enumerate(items):
                if len(node.names) == 2:
                    scope.vars[node.names[0]] = index
                    scope.vars[node.names[1]] = item
                elif len(node.names) == 1:
                    scope.vars[node.names[0]] = item
                _render(node.body, item, scope, out)


def render(template: str, data: dict[str, Any]) -> str:
    """Render ``template`` with ``data`` as the dot, e.g. ``{"Messages": [...], "System": ""}``."""
    nodes, _pos, closing = _parse(_lex(template))
    if closing:
        raise ValueError(f"unexpected {{{{ {closing} }}}}")
    out: list[str] = []
    _render(nodes, data, _Scope(data), out)
    return "".join(out)
