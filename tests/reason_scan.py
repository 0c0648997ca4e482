"""Every error reason the server code can send, found by reading the code (no import, no run).

The scan parses every module under a package root and follows the ways a reason reaches
``google.rpc.ErrorInfo.reason``:

* ``default_reason`` class attributes of the ``ZumikError`` classes (raised without ``reason=``);
* ``reason=`` arguments of calls to an error class or to ``ErrorInfo``;
* helpers with a ``reason`` parameter that pass it on to such a call (``_bad(field, msg,
  "X")``, ``_fail(REASON_X)``), found to a fixed point, including their parameter defaults;
* the refusals of the authorization policy (``Decision(reason=...)`` whose reason
  ``check_identity`` forwards), minus ``ALLOWED``, which is never an error.

A value is resolved when it is a string literal, a module constant (``REASON_X = "X"``), a
constant imported from another scanned module (``from m import X`` or ``m.X``), or a
conditional expression of those. Anything else is reported in ``unresolved`` with its place,
so a new way of passing reasons makes the test fail instead of being missed silently.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

#: The error base class and the calls that put a reason on the wire.
ERROR_BASE = "ZumikError"
WIRE_SINKS = frozenset({"ErrorInfo"})
#: Reasons passed by attribute that the scan knows the source of: place -> expression.
#: ``error.reason`` re-sends a ZumikError's own reason (found where the error was built);
#: ``decision.reason`` forwards a policy refusal (the ``Decision`` reasons, added below).
KNOWN_FORWARDS = frozenset(
    {
        ("zumik_secrets.api.status", "error.reason"),
        ("zumik_secrets.server.authorization", "decision.reason"),
    }
)
POLICY_DECISION = "Decision"
POLICY_ALLOWED = "ALLOWED"

Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class _Module:
    name: str
    tree: ast.Module
    consts: dict[str, str] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class ScanResult:
    """What the scan found."""

    #: reason -> the error classes (or ``ErrorInfo``) it is raised with.
    classes: dict[str, set[str]] = field(default_factory=dict)
    #: reason -> places (``module:line``) it comes from.
    places: dict[str, set[str]] = field(default_factory=dict)
    #: ``(module, expression, line)`` of reason values the scan could not resolve.
    unresolved: list[tuple[str, str, int]] = field(default_factory=list)
    #: ``module:line`` of direct ``ZumikError(...)`` constructions (they send ``ERROR``).
    base_constructions: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> set[str]:
        """Every reason found."""
        return set(self.places)

    def add(self, reasons: set[str], cls: set[str], place: str) -> None:
        """Record ``reasons`` raised as ``cls`` at ``place``."""
        for reason in reasons:
            self.places.setdefault(reason, set()).add(place)
            self.classes.setdefault(reason, set()).update(cls)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _load(root: Path) -> dict[str, _Module]:
    modules: dict[str, _Module] = {}
    for path in sorted(root.rglob("*.py")):
        mod = _Module(_module_name(root, path), ast.parse(path.read_text("utf-8"), str(path)))
        for node in mod.tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign):
                targets, value = [node.target], node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for target in targets:
                    if isinstance(target, ast.Name):
                        mod.consts[target.id] = value.value
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    mod.imports[local] = (node.module, alias.name)
                    mod.aliases[local] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        mod.aliases[alias.asname] = alias.name
        modules[mod.name] = mod
    return modules


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _params(fn: Function) -> list[str]:
    return [a.arg for a in fn.args.posonlyargs + fn.args.args]


def _reason_default(fn: Function) -> ast.expr | None:
    positional = fn.args.posonlyargs + fn.args.args
    names = [a.arg for a in positional]
    if "reason" in names:
        index = names.index("reason")
        first_default = len(positional) - len(fn.args.defaults)
        return fn.args.defaults[index - first_default] if index >= first_default else None
    keyword_only = [a.arg for a in fn.args.kwonlyargs]
    if "reason" in keyword_only:
        return fn.args.kw_defaults[keyword_only.index("reason")]
    return None


def _has_reason_param(fn: Function) -> bool:
    return "reason" in _params(fn) + [a.arg for a in fn.args.kwonlyargs]


def _reason_arg(call: ast.Call, fn: Function | None) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "reason":
            return keyword.value
    if fn is None:
        return None
    names = _params(fn)
    if names and names[0] in ("self", "cls") and isinstance(call.func, ast.Attribute):
        names = names[1:]
    if "reason" in names and names.index("reason") < len(call.args):
        return call.args[names.index("reason")]
    return None


class _Scanner:
    def __init__(self, root: Path) -> None:
        self.modules = _load(root)
        self.result = ScanResult()
        self.functions: dict[str, list[Function]] = {}
        bases: dict[str, list[str]] = {}
        self.defaults: dict[str, tuple[_Module, ast.expr]] = {}
        for mod in self.modules.values():
            for node in ast.walk(mod.tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append(node)
                elif isinstance(node, ast.ClassDef):
                    bases[node.name] = [
                        b.id if isinstance(b, ast.Name) else b.attr
                        for b in node.bases
                        if isinstance(b, ast.Name | ast.Attribute)
                    ]
                    for stmt in node.body:
                        if isinstance(stmt, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == "default_reason"
                            for t in stmt.targets
                        ):
                            self.defaults[node.name] = (mod, stmt.value)

        def is_error(name: str, seen: frozenset[str] = frozenset()) -> bool:
            if name == ERROR_BASE:
                return True
            return any(is_error(b, seen | {name}) for b in bases.get(name, ()) if b not in seen)

        self.error_classes = {name for name in bases if is_error(name)}
        self.sinks = self.error_classes | WIRE_SINKS
        self.helpers = self._find_helpers()

    def _find_helpers(self) -> dict[str, set[str]]:
        """Functions that pass their ``reason`` parameter on to an error: name -> classes."""
        helpers: dict[str, set[str]] = {}
        changed = True
        while changed:
            changed = False
            for name, defs in self.functions.items():
                if name in self.sinks:
                    continue
                for fn in defs:
                    if not _has_reason_param(fn):
                        continue
                    for call in ast.walk(fn):
                        if not isinstance(call, ast.Call):
                            continue
                        target = _callee(call)
                        if target is None or target == name:
                            continue
                        if target in self.sinks:
                            arg, classes = _reason_arg(call, None), {target}
                        elif target in helpers:
                            arg = next(
                                (
                                    a
                                    for f in self.functions[target]
                                    if (a := _reason_arg(call, f)) is not None
                                ),
                                None,
                            )
                            classes = helpers[target]
                        else:
                            continue
                        if isinstance(arg, ast.Name) and arg.id == "reason":
                            before = helpers.get(name, set()).copy()
                            helpers.setdefault(name, set()).update(classes)
                            changed |= helpers[name] != before
        return helpers

    def resolve(self, mod: _Module, value: ast.expr, params: set[str]) -> tuple[set[str], bool]:
        """The strings ``value`` can be, and whether it was fully resolved."""
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return {value.value}, True
        if isinstance(value, ast.IfExp):
            body, ok_body = self.resolve(mod, value.body, params)
            orelse, ok_else = self.resolve(mod, value.orelse, params)
            return body | orelse, ok_body and ok_else
        if isinstance(value, ast.Name):
            if value.id in params:
                return set(), True  # a helper's parameter: resolved at its call sites
            if value.id in mod.consts:
                return {mod.consts[value.id]}, True
            if value.id in mod.imports:
                source, attr = mod.imports[value.id]
                if source in self.modules and attr in self.modules[source].consts:
                    return {self.modules[source].consts[attr]}, True
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            source = mod.aliases.get(value.value.id, "")
            if source in self.modules and value.attr in self.modules[source].consts:
                return {self.modules[source].consts[value.attr]}, True
        return set(), False

    def _record(self, mod: _Module, value: ast.expr, params: set[str], classes: set[str]) -> None:
        reasons, ok = self.resolve(mod, value, params)
        self.result.add(reasons, classes, f"{mod.name}:{value.lineno}")
        if not ok:
            self.result.unresolved.append((mod.name, ast.unparse(value), value.lineno))

    def _calls(self, mod: _Module, node: ast.AST, params: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = set(_params(child)) | {a.arg for a in child.args.kwonlyargs}
                default = _reason_default(child) if child.name in self.helpers else None
                if default is not None:
                    self._record(mod, default, set(), self.helpers[child.name])
                self._calls(mod, child, inner)
                continue
            if isinstance(child, ast.Call):
                self._call(mod, child, params)
            self._calls(mod, child, params)

    def _call(self, mod: _Module, call: ast.Call, params: set[str]) -> None:
        target = _callee(call)
        if target == ERROR_BASE:
            self.result.base_constructions.append(f"{mod.name}:{call.lineno}")
        if target in self.sinks:
            arg, classes = _reason_arg(call, None), {target}
        elif target in self.helpers:
            arg = next(
                (a for f in self.functions[target] if (a := _reason_arg(call, f)) is not None),
                None,
            )
            classes = self.helpers[target]
        else:
            return
        if arg is None:
            return
        if isinstance(arg, ast.Attribute) and (mod.name, ast.unparse(arg)) in KNOWN_FORWARDS:
            return
        self._record(mod, arg, params, classes)

    def scan(self) -> ScanResult:
        for name, (mod, value) in self.defaults.items():
            if name in self.error_classes:
                self._record(mod, value, set(), {name})
        for mod in self.modules.values():
            self._calls(mod, mod.tree, set())
            for call in ast.walk(mod.tree):
                if isinstance(call, ast.Call) and _callee(call) == POLICY_DECISION:
                    arg = _reason_arg(call, None)
                    if arg is not None:
                        reasons, ok = self.resolve(mod, arg, set())
                        self.result.add(
                            reasons - {POLICY_ALLOWED},
                            {"PermissionDenied"},
                            f"{mod.name}:{call.lineno}",
                        )
                        if not ok:
                            self.result.unresolved.append((mod.name, ast.unparse(arg), call.lineno))
        # The base class's reason is sent only if it is constructed directly.
        if not self.result.base_constructions:
            for reason, classes in list(self.result.classes.items()):
                if classes == {ERROR_BASE}:
                    del self.result.classes[reason], self.result.places[reason]
        return self.result


def scan(root: Path) -> ScanResult:
    """Scan the package at ``root`` (e.g. ``service/zumik_secrets``)."""
    return _Scanner(root).scan()
