"""The concrete reading compiled: each action's effect (and guard, demand, invariant) traced
once on symbolic fields and turned into one straight-line Python function.

An effect written against the ops interface builds every branch's candidate state and merges
them (the z3 reading needs both), through a hundred small calls per step. Run once on a state
whose fields are :class:`Sym` nodes (an expression graph, as z3 terms would be, but built by
plain Python objects in microseconds), the effect yields, for every field of the next state
and for its result, an expression over the fields it read; :func:`compile_effect` writes
those expressions as one Python function (conditions as ``x if c else y``, shared
subexpressions computed once) and a slot no expression changes keeps its record object.

Exact: the function computes the concrete reading's values, operation by operation
(``ConcreteOps``'s definitions: ``ite`` picks, ``and_``/``or_`` give bools, ``blocks`` is a
ceiling division), and code that asks a symbolic value for its truth (Python control flow on
the state, which the z3 reading forbids too) stops the trace: the action then runs
interpreted (so does code that fails on a symbolic value in any other way). Effects are
specialized on the argument values that steer their Python (``bool`` parameters, which pages
of ``demote`` are 0) and on the slot; guards, demands and invariants on the slot.
The walker (:func:`~kvspec.spec.walker.walk`) runs on these functions; the z3 reading and
every other concrete caller run the spec's own code. ``tests/spec/test_compiled.py``
compares the two on every preset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kvspec.config import Config
from kvspec.policy import Policy

from .invariants import Property
from .model import Model, transition
from .ops import ConcreteOps, Term
from .registry import Action, Ctx, Outcome
from .state import REQ_BOOL_FIELDS, STATE_BOOL_FIELDS, Req, State


class NotTraceable(Exception):
    """Code asked a symbolic value for its truth (Python control flow on the state), or
    failed on one otherwise: it is not compiled."""


class Sym:
    """A symbolic value: a field read (``op`` "var"), or an operation on symbolic values and
    Python constants. ``boolean``: the concrete reading's value is a bool."""

    __slots__ = ("op", "args", "boolean")

    def __init__(self, op: str, args: tuple[Any, ...], boolean: bool) -> None:
        self.op = op
        self.args = args
        self.boolean = boolean

    def __bool__(self) -> bool:
        raise NotTraceable("the truth value of a symbolic value was asked")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Sym({self.op}, {self.args!r})"

    def __add__(self, other: Any) -> Any:
        return _arith("+", self, other)

    def __radd__(self, other: Any) -> Any:
        return _arith("+", other, self)

    def __sub__(self, other: Any) -> Any:
        return _arith("-", self, other)

    def __rsub__(self, other: Any) -> Any:
        return _arith("-", other, self)

    def __mul__(self, other: Any) -> Any:
        return _arith("*", self, other)

    def __rmul__(self, other: Any) -> Any:
        return _arith("*", other, self)

    def __neg__(self) -> Any:
        return Sym("neg", (self,), False)

    def __eq__(self, other: Any) -> Any:
        return True if other is self else Sym("==", (self, other), True)

    def __ne__(self, other: Any) -> Any:
        return False if other is self else Sym("!=", (self, other), True)

    def __lt__(self, other: Any) -> Any:
        return Sym("<", (self, other), True)

    def __le__(self, other: Any) -> Any:
        return Sym("<=", (self, other), True)

    def __gt__(self, other: Any) -> Any:
        return Sym(">", (self, other), True)

    def __ge__(self, other: Any) -> Any:
        return Sym(">=", (self, other), True)


def _arith(op: str, a: Any, b: Any) -> Any:
    """``a op b`` with a symbolic operand; adding or subtracting an int 0 gives the other
    operand back when that is an int (as the concrete reading's value would be)."""
    if op in "+-" and type(b) is int and b == 0 and not _is_bool(a):
        return a
    if op == "+" and type(a) is int and a == 0 and not _is_bool(b):
        return b
    return Sym(op, (a, b), False)


def _is_bool(x: Any) -> bool:
    return x.boolean if isinstance(x, Sym) else isinstance(x, bool)


class SymOps:
    """The ops on :class:`Sym` values: the concrete reading's operations, folded where an
    operand decides the result (as the concrete call would), else recorded."""

    def __init__(self, concrete: ConcreteOps) -> None:
        self._c = concrete
        self.tokens_per_block = concrete.tokens_per_block

    def ite(self, cond: Term, then: Term, other: Term) -> Term:
        if not isinstance(cond, Sym):
            return then if cond else other
        if then is other:
            return then
        return Sym("ite", (cond, then, other), _is_bool(then) and _is_bool(other))

    def and_(self, *xs: Term) -> Term:
        return _junction("and", xs, False)

    def or_(self, *xs: Term) -> Term:
        return _junction("or", xs, True)

    def not_(self, x: Term) -> Term:
        return Sym("not", (x,), True) if isinstance(x, Sym) else not x

    def implies(self, a: Term, b: Term) -> Term:
        if not isinstance(a, Sym) and not isinstance(b, Sym):
            return self._c.implies(a, b)
        return self.or_(self.not_(a), b)

    def min(self, a: Term, b: Term) -> Term:
        if not isinstance(a, Sym) and not isinstance(b, Sym):
            return self._c.min(a, b)
        return Sym("min", (a, b), False)

    def max(self, a: Term, b: Term) -> Term:
        if not isinstance(a, Sym) and not isinstance(b, Sym):
            return self._c.max(a, b)
        return Sym("max", (a, b), False)

    def blocks(self, capacity: Term) -> Term:
        if not isinstance(capacity, Sym):
            return self._c.blocks(capacity)
        return Sym("blocks", (capacity,), False)

    def util_exceeds(self, used: Term, total: Term) -> Term:
        return self._c.util_exceeds(used, total)  # arithmetic only: Sym operators record it


def _junction(op: str, xs: Sequence[Term], decisive: bool) -> Term:
    """``all``/``any`` of ``xs`` (``decisive`` False/True): a constant that decides it
    decides it; constants that do not are dropped."""
    rest = []
    for x in xs:
        if isinstance(x, Sym):
            rest.append(x)
        elif bool(x) is decisive:
            return decisive
    if not rest:
        return not decisive
    if len(rest) == 1 and rest[0].boolean:
        return rest[0]
    return Sym(op, tuple(rest), True)


Compiled = Callable[[State, Mapping[str, Any]], Outcome]
"""A compiled effect: ``(state, arguments) -> Outcome``, as :func:`transition` gives."""


class _Trace:
    """The symbolic inputs of one trace: a state whose fields are :class:`Sym` reads, the
    symbolic ctx, and arguments (symbolic ints; bools and zero ``demote`` entries kept)."""

    def __init__(self, m: Model) -> None:
        concrete = m.ctx.o
        assert isinstance(concrete, ConcreteOps)
        self.ops = SymOps(concrete)
        self.ctx = Ctx(self.ops, m.ctx.policy, m.ctx.config, m.ctx.abstract_rest)
        n = m.config.num_requests
        svars = {f: Sym("var", ("s", i), f in STATE_BOOL_FIELDS)
                 for i, f in enumerate(State._fields) if f != "reqs"}
        self.qvars = [tuple(Sym("var", ("q", j, k), f in REQ_BOOL_FIELDS)
                            for k, f in enumerate(Req._fields)) for j in range(n)]
        self.state = State(reqs=tuple(Req(*q) for q in self.qvars), **svars)
        self.victim_slots = len(m.no_victims)

    def arguments(self, a: Action, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Symbolic arguments of ``a``: agreeing with ``args`` on bools and zero victims,
        or every one symbolic when ``args`` is None."""
        out: dict[str, Any] = {}
        for p in a.params:
            if p.kind == "bool":
                out[p.name] = (args[p.name] if args is not None
                               else Sym("var", ("a", p.name), True))
            elif p.kind == "slots":
                n = self.victim_slots
                given = args[p.name] if args is not None else (None,) * n
                out[p.name] = tuple(0 if type(d) is int and d == 0
                                    else Sym("var", ("d", j), False)
                                    for j, d in enumerate(given))
            else:
                out[p.name] = Sym("var", ("a", p.name), False)
        return out


def compile_effect(m: Model, a: Action, r: int, args: Mapping[str, Any]) -> Compiled:
    """``transition(m.ctx, a, ., r, .)`` as one Python function, specialized on slot ``r``
    and on ``args``'s bool values and zero ``demote`` entries (the function is right for
    every argument assignment that agrees with ``args`` on those).

    Raises:
        NotTraceable: the effect branches in Python on a state field or an int argument,
            or fails on a symbolic value.
    """
    tr = _Trace(m)
    out = _traced(lambda: transition(tr.ctx, a, tr.state, r, tr.arguments(a, args)))
    reqs_out = out.state.reqs
    state_out = [v for f, v in zip(State._fields, out.state) if f != "reqs"]
    # a slot whose every field is its own input keeps its record
    kept = [all(v is qv for v, qv in zip(q, tr.qvars[j])) for j, q in enumerate(reqs_out)]
    roots: list[Any] = [*state_out, out.result]
    for j, q in enumerate(reqs_out):
        if not kept[j]:
            roots.extend(q)
    emit = _Emitter(roots, tr.ops.tokens_per_block)
    fields = [emit.expr(v) for v in state_out]
    slots = [f"reqs[{j}]" if kept[j] else f"_new(Req, ({', '.join(emit.expr(v) for v in q)},))"
             for j, q in enumerate(reqs_out)]
    result = emit.expr(out.result)
    fn: Compiled = emit.function(
        f"{a.name}_r{r}", "s, args",
        f"_Outcome(_new(State, (({', '.join(slots)},), {', '.join(fields)})), {result})")
    return fn


def compile_guard(m: Model, a: Action, r: int) -> Callable[[State, Mapping[str, Any]], Term]:
    """``a.guard(m.ctx, s, r, **args)`` (an evicting action's: its precondition) as one
    Python function ``(s, args)``, every argument symbolic.

    Raises:
        NotTraceable: the guard branches in Python on a state field or an argument, or
            fails on a symbolic value.
    """
    tr = _Trace(m)
    guard = a.precondition if a.precondition is not None else a.guard
    params = [p for p in a.params if a.precondition is None or p.kind != "slots"]
    args = tr.arguments(a, None)
    return _value_function(
        tr, lambda: guard(tr.ctx, tr.state, r, **{p.name: args[p.name] for p in params}),
        f"{a.name}_guard_r{r}", "s, args")


def compile_value(m: Model, f: Callable[..., Term], signature: str, *extra: Any) -> Any:
    """``f(m.ctx, s, *extra)`` (a guard, a demand, an invariant: a function of the state
    that returns one value) as one Python function taking ``signature`` (``"c, s"`` or
    ``"s"``; the ctx, when taken, is not read).

    Raises:
        NotTraceable: ``f`` branches in Python on a state field, or fails on a symbolic
            value.
    """
    tr = _Trace(m)
    return _value_function(tr, lambda: f(tr.ctx, tr.state, *extra),
                           getattr(f, "__name__", "value").strip("<>_") or "value", signature)


def _value_function(tr: _Trace, run: Callable[[], Term], name: str, signature: str) -> Any:
    """The function ``name(signature)`` returning the value ``run()`` computes on ``tr``'s
    symbolic inputs."""
    value = _traced(run)
    emit = _Emitter([value], tr.ops.tokens_per_block)
    return emit.function(name, signature, emit.expr(value))


def _traced(run: Callable[[], Any]) -> Any:
    """``run()`` on symbolic values; any failure (a truth value asked, an operation a
    :class:`Sym` does not have) is :class:`NotTraceable`."""
    try:
        return run()
    except NotTraceable:
        raise
    except Exception as e:  # noqa: BLE001 - whatever failed, the code is run interpreted
        raise NotTraceable(f"tracing failed on a symbolic value: {e!r}") from e


class _Emitter:
    """Python source for expressions over :class:`Sym` values: a node used more than once
    is computed once into a local (``t<n>``), the others inline."""

    def __init__(self, roots: Sequence[Any], tokens_per_block: int) -> None:
        self._b = tokens_per_block
        self._uses: dict[int, int] = {}  # references from the roots and from other nodes
        for x in [*roots, *(y for node in _walk(roots) for y in node.args)]:
            if isinstance(x, Sym):
                self._uses[id(x)] = self._uses.get(id(x), 0) + 1
        self._names: dict[int, str] = {}
        self._lines: list[str] = []

    def atom(self, x: Any) -> str:
        """``x`` as an expression that may be evaluated twice (a name or a constant)."""
        if not isinstance(x, Sym):
            return repr(x)
        name = self._names.get(id(x))
        if name is None:
            name = self._names[id(x)] = f"t{len(self._names)}"
            self._lines.append(f"    {name} = {self.expr(x, True)}")
        return name

    def expr(self, x: Any, defining: bool = False) -> str:
        """``x`` as a Python expression (``defining``: the right-hand side of its local)."""
        if not isinstance(x, Sym):
            return repr(x)
        if not defining and id(x) in self._names:
            return self._names[id(x)]
        if x.op == "var" and (defining or self._uses.get(id(x), 0) <= 1):
            return _read(x.args)
        if not defining and self._uses.get(id(x), 0) > 1:
            return self.atom(x)
        op, xs, e = x.op, x.args, self.expr
        if op in ("+", "-", "*", "==", "!=", "<", "<=", ">", ">="):
            return f"({e(xs[0])} {op} {e(xs[1])})"
        if op == "neg":
            return f"(-{e(xs[0])})"
        if op == "not":
            return f"(not {e(xs[0])})"
        if op == "ite":
            return f"({e(xs[1])} if {e(xs[0])} else {e(xs[2])})"
        if op in ("and", "or"):
            if all(_is_bool(y) for y in xs):
                return "(" + f" {op} ".join(e(y) for y in xs) + ")"
            return f"{'all' if op == 'and' else 'any'}(({', '.join(e(y) for y in xs)},))"
        if op in ("min", "max"):
            u, v = self.atom(xs[0]), self.atom(xs[1])
            return f"({u} if {u} {'<=' if op == 'min' else '>='} {v} else {v})"
        if op == "blocks":
            return f"(-(-{e(xs[0])} // {self._b}))"
        raise AssertionError(f"unknown symbolic operation {op!r}")

    def function(self, name: str, signature: str, returned: str) -> Any:
        """A function ``name(signature)`` returning ``returned`` after the locals it uses
        (call after building every expression)."""
        name = "compiled_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        src = (f"def {name}({signature}):\n    reqs = s[0]\n" + "".join(
            line + "\n" for line in self._lines) + f"    return {returned}\n")
        namespace: dict[str, Any] = {"_new": tuple.__new__, "Req": Req, "State": State,
                                     "_Outcome": Outcome}
        exec(compile(src, f"<compiled {name}>", "exec"), namespace)  # noqa: S102 - our code
        fn = namespace[name]
        fn.source = src
        return fn


def _read(var: tuple[Any, ...]) -> str:
    """The Python expression reading a field or an argument."""
    if var[0] == "s":
        return f"s[{var[1]}]"
    if var[0] == "q":
        return f"reqs[{var[1]}][{var[2]}]"
    if var[0] == "d":
        return f"args['demote'][{var[1]}]"
    return f"args[{var[1]!r}]"


def _walk(roots: Sequence[Any]) -> Iterator[Sym]:
    """Every distinct :class:`Sym` reachable from ``roots``, once each."""
    seen: set[int] = set()
    stack = [x for x in roots if isinstance(x, Sym)]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack.extend(y for y in x.args if isinstance(y, Sym))


class CompiledModel:
    """A model's effects, guards, demands and invariants compiled, each on first use and
    kept: effects per (action, slot, steering arguments), guards and demands per (action,
    slot), invariants per property.

    :meth:`step` gives what :func:`~kvspec.spec.model.transition` gives (the same values and
    types; a slot the step does not change keeps its record object), running interpreted an
    effect that cannot be traced (:class:`NotTraceable`); :meth:`guard`, :meth:`demand` and
    :meth:`check` give None for code that cannot be traced. Cost: per step a specialization
    key, a dict lookup and the compiled body; per new function a trace and a ``compile``
    (about a millisecond). :func:`compiled_model` shares one per config and policy.
    """

    def __init__(self, m: Model) -> None:
        self._m = m
        self._effects: dict[tuple[Any, ...], Compiled] = {}
        self._bools = {a.name: tuple(p.name for p in a.params if p.kind == "bool")
                       for a in m.actions}
        self._guards: dict[tuple[str, int], Any] = {}
        self._demands: dict[tuple[str, int], Any] = {}
        self._checks: dict[str, Any] = {}

    def step(self, a: Action, s: State, r: int, args: Mapping[str, Any]) -> Outcome:
        """``transition(ctx, a, s, r, args)`` by the compiled effect."""
        demote = args.get("demote")
        key: tuple[Any, ...] = (a.name, r, *[args[p] for p in self._bools[a.name]])
        if demote is not None and any(demote):
            key = (*key, *[d == 0 for d in demote])
        fn = self._effects.get(key)
        if fn is None:
            try:
                fn = compile_effect(self._m, a, r, args)
            except NotTraceable:
                ctx = self._m.ctx
                fn = lambda s, args: transition(ctx, a, s, r, args)  # noqa: E731
            self._effects[key] = fn
        return fn(s, args)

    def guard(self, a: Action, r: int) -> Callable[[State, Mapping[str, Any]], Term] | None:
        """:func:`compile_guard` of ``a`` on slot ``r`` (None: not traceable)."""
        return _kept(self._guards, (a.name, r), lambda: compile_guard(self._m, a, r))

    def demand(self, a: Action, r: int) -> Callable[[State], Term] | None:
        """``a.demand(ctx, s, r)`` compiled as ``(s)`` (None: not traceable)."""
        assert a.demand is not None
        demand = a.demand
        return _kept(self._demands, (a.name, r),
                     lambda: compile_value(self._m, demand, "s", r))

    def check(self, p: Property) -> Callable[[Ctx, State], Term] | None:
        """``p.check`` compiled as ``(c, s)`` (None: not traceable)."""
        return _kept(self._checks, p.id, lambda: compile_value(self._m, p.check, "c, s"))


def _kept(table: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    """``table[key]``, made by ``make()`` the first time (None when it raises
    :class:`NotTraceable`)."""
    if key in table:
        return table[key]
    try:
        fn = make()
    except NotTraceable:
        fn = None
    table[key] = fn
    return fn


def compiled_model(m: Model) -> CompiledModel:
    """The :class:`CompiledModel` of ``m``'s config, policy and abstraction, shared by the
    calls that ask for the same ones (the 16 most recent are kept)."""
    return _compiled(m.config, m.policy, m.ctx.abstract_rest)


@functools.lru_cache(maxsize=16)
def _compiled(config: Config, policy: Policy, abstract_rest: bool) -> CompiledModel:
    return CompiledModel(Model(config, policy, abstract_rest=abstract_rest))
