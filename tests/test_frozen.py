"""cmover.core.frozen.NamedTuple: the class statement of typing.NamedTuple, made without compiling annotations."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from cmover.core.failure import Failure
from cmover.core.frozen import NamedTuple


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: str | None = None

    LIMIT = 10  # a constant of the class, not a field

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)

    def moved(self, dx: int) -> Point:
        return self._replace(x=self.x + dx)

    @classmethod
    def origin(cls) -> Point:
        return cls(0)


def _typing_point() -> type:
    """The same class statement made by typing.NamedTuple, to compare with."""

    class Point(typing.NamedTuple):  # noqa: TID251 (the reference)
        """A point."""

        x: int
        y: int = 0
        label: str | None = None

        LIMIT = 10

        @property
        def norm(self) -> int:
            return abs(self.x) + abs(self.y)

    return Point


def test_a_named_tuple_class_is_what_typing_makes_of_the_same_statement() -> None:
    ref = _typing_point()
    p = Point(3, -4)
    assert p == (3, -4, None) == ref(3, -4)
    assert Point._fields == ref._fields == ("x", "y", "label")
    assert Point._field_defaults == ref._field_defaults == {"y": 0, "label": None}
    assert repr(p) == "Point(x=3, y=-4, label=None)" == repr(ref(3, -4))
    assert (p.norm, p.moved(2), Point.origin(), Point.LIMIT) == (7, Point(5, -4), Point(0, 0), 10)
    assert p._asdict() == {"x": 3, "y": -4, "label": None}
    assert Point._make([1, 2, "a"]) == Point(1, 2, "a")
    assert isinstance(p, tuple) and type(p).__mro__[1:] == (tuple, object)
    assert Point.__doc__ == "A point." and Point.__module__ == __name__
    assert Point.__qualname__ == "Point" and Point.__name__ == "Point"
    assert Point.__annotations__ == {"x": "int", "y": "int", "label": "str | None"}  # as written, never compiled
    with pytest.raises(AttributeError):
        p.x = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_a_field_without_default_after_one_with_a_default_or_a_reserved_name_is_refused() -> None:
    with pytest.raises(TypeError, match="'b' has no default but follows a field with one"):
        class Bad(NamedTuple):
            a: int = 0
            b: int

    with pytest.raises(AttributeError, match="Cannot overwrite NamedTuple attribute _replace"):
        class Worse(NamedTuple):
            a: int

            def _replace(self) -> None:  # type: ignore[override]
                pass


def test_a_subclass_is_a_plain_class_and_the_list_records_keep_their_own_equality() -> None:
    class Labelled(Point):
        def text(self) -> str:
            return f"{self.label}@{self.x},{self.y}"

    assert Labelled(1, 2, "a").text() == "a@1,2" and Labelled(1, 2, "a") == Point(1, 2, "a")
    # by_item: two records of one failure are equal whoever met it, and when.
    a = Failure(b"d/f", "copy", 13, "Permission denied", "source", "h1:1", 1.0)
    b = Failure(b"d/f", "copy", 13, "Permission denied", "source", "h2:2", 2.0)
    assert a == b and hash(a) == hash(b) and a != a._replace(errno=5)


def test_importing_cmover_compiles_no_annotation() -> None:
    """Every named tuple of cmover's modules is made by cmover.core.frozen, whatever way the class names its base:
    a ForwardRef made for a class statement of cmover's is the standard library compiling an annotation."""
    code = (
        "import pkgutil, sys, typing\n"
        "made = []\n"
        "init = typing.ForwardRef.__init__\n"
        "def counted(self, arg, *a, **k):\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None and f.f_globals.get('__name__') == 'typing':\n"
        "        f = f.f_back\n"
        "    if f is not None and f.f_globals.get('__name__', '').startswith('cmover'):\n"
        "        made.append((f.f_globals['__name__'], arg))\n"
        "    init(self, arg, *a, **k)\n"
        "typing.ForwardRef.__init__ = counted\n"
        "import cmover\n"
        "names = [m.name for m in pkgutil.walk_packages(cmover.__path__, 'cmover.') if m.name != 'cmover.__main__']\n"
        "for name in names:\n"
        "    __import__(name)\n"
        "print(len(names), len(made), made[:5])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    modules, made = r.stdout.split()[:2]
    assert int(modules) > 100 and made == "0", r.stdout
