"""Symbol demangling, so Rust (v0) and C++ (Itanium) frames read like their source names.

Why: a title names a function; a mangled name would split one bug across compilers and
versions, and nobody reads `_RNvCs...`. Names come from the guest: the input is bounded in
length and recursion depth, and anything that does not parse is returned unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from farm.triage.patterns import memo

_B62: Final = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_RUST_BASIC: Final = {
    "a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8",
    "i": "isize", "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128", "s": "i16",
    "t": "u16", "u": "()", "v": "...", "x": "i64", "y": "u64", "z": "!", "p": "_",
}  # fmt: skip


class _RustV0:
    """A small v0 demangler (paths, impls, generic args, common types), bounded in depth."""

    def __init__(self, sym: str) -> None:
        self.s = sym
        self.i = 2  # after "_R"
        self.depth = 0

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _next(self) -> str:
        if self.i >= len(self.s):
            raise ValueError("truncated")
        self.i += 1
        return self.s[self.i - 1]

    def _eat(self, ch: str) -> bool:
        if self._peek() == ch:
            self.i += 1
            return True
        return False

    def _b62(self) -> int:
        if self._eat("_"):
            return 0
        value = 0
        for _ in range(24):
            ch = self._next()
            if ch == "_":
                return value + 1
            value = value * 62 + _B62.index(ch)
        raise ValueError("number")

    def _disambiguator(self) -> None:
        if self._eat("s"):
            self._b62()

    def _ident(self) -> str:
        self._disambiguator()
        self._eat("u")  # punycode: shown raw
        start = self.i
        while self._peek().isdigit():
            self.i += 1
        if start == self.i:
            raise ValueError("ident")
        n = int(self.s[start : self.i])
        self._eat("_")
        name = self.s[self.i : self.i + n]
        if len(name) != n:
            raise ValueError("ident")
        self.i += n
        return name

    def _backref(self, parse: Callable[[], str]) -> str:
        at = self.i - 1
        pos = self._b62() + 2
        if pos >= at:
            raise ValueError("backref")
        saved, self.i = self.i, pos
        try:
            return parse()
        finally:
            self.i = saved

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > 64:
            raise ValueError("depth")

    def path(self) -> str:
        self._enter()
        try:
            tag = self._next()
            if tag == "C":
                return self._ident()
            if tag == "N":
                ns = self._next()
                parent = self.path()
                name = self._ident()
                if ns.isupper():
                    return f"{parent}::{{{'closure' if ns == 'C' else 'shim'}}}"
                return f"{parent}::{name}" if name else parent
            if tag == "M":
                self._disambiguator()
                self.path()
                return f"<{self.type()}>"
            if tag == "X":
                self._disambiguator()
                self.path()
                ty = self.type()
                return f"<{ty} as {self.path()}>"
            if tag == "Y":
                ty = self.type()
                return f"<{ty} as {self.path()}>"
            if tag == "I":
                base = self.path()
                args = []
                while not self._eat("E"):
                    args.append(self._generic_arg())
                return f"{base}::<{', '.join(args)}>"
            if tag == "B":
                return self._backref(self.path)
            raise ValueError("path")
        finally:
            self.depth -= 1

    def _generic_arg(self) -> str:
        if self._eat("L"):
            self._b62()
            return "'_"
        if self._eat("K"):
            return self._const()
        return self.type()

    def _const(self) -> str:
        if self._eat("p"):
            return "_"
        if self._eat("B"):
            return self._backref(self._const)
        self._next()  # the constant's type
        neg = self._eat("n")
        start = self.i
        while self._peek() not in ("_", ""):
            self.i += 1
        digits = self.s[start : self.i]
        self._next()
        return ("-" if neg else "") + (str(int(digits, 16)) if digits else "0")

    def type(self) -> str:
        self._enter()
        try:
            tag = self._peek()
            if tag and tag in _RUST_BASIC:
                self.i += 1
                return _RUST_BASIC[tag]
            if tag in ("R", "Q"):
                self.i += 1
                if self._eat("L"):
                    self._b62()
                return ("&" if tag == "R" else "&mut ") + self.type()
            if tag in ("P", "O"):
                self.i += 1
                return ("*const " if tag == "P" else "*mut ") + self.type()
            if tag == "S":
                self.i += 1
                return f"[{self.type()}]"
            if tag == "A":
                self.i += 1
                ty = self.type()
                self._eat("K")
                return f"[{ty}; {self._const()}]"
            if tag == "T":
                self.i += 1
                items = []
                while not self._eat("E"):
                    items.append(self.type())
                return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
            if tag == "B":
                self.i += 1
                return self._backref(self.type)
            return self.path()
        finally:
            self.depth -= 1


_CXX_NAME: Final = re.compile(r"([0-9]+)")


def _demangle_cxx(name: str) -> str:
    """Itanium names without parameters: `_Z3foov` -> foo, `_ZN2ns3barEi` -> ns::bar."""
    i = 2
    nested = name.startswith("N", i)
    if nested:
        i += 1
        while i < len(name) and name[i] in "rVKRO":  # cv/ref qualifiers of member functions
            i += 1
    parts: list[str] = []
    while i < len(name) and name[i].isdigit():
        m = _CXX_NAME.match(name, i)
        assert m is not None
        n = int(m.group(1))
        i = m.end()
        if n == 0 or i + n > len(name):
            return name
        parts.append(name[i : i + n])
        i += n
        if not nested:
            break
    if not parts or (nested and not name.startswith("E", i)):
        return name
    return "::".join(parts)


@memo
def demangle(name: str) -> str:
    """Demangle a Rust v0 (`_R...`) or C++ (`_Z...`) symbol; anything else is unchanged."""
    if len(name) > 1024:
        return name
    if name.startswith("_R"):
        try:
            return _RustV0(name).path()
        except (ValueError, IndexError):
            return name
    if name.startswith("_Z"):
        return _demangle_cxx(name)
    return name
