"""node's exception tree: every error descends from NodeError, and node/errors.py draws it truly.

The walk covers every module under node/ (no allow-list): a new exception class either hangs
under NodeError and appears in the drawing at its place, or this test names it.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import node
import node.errors
from node.errors import NodeError
from scp import ScpError
from secure_infer import InferenceError

NODE_DIR = Path(node.__file__).parent
FOREIGN_ROOTS = {"ScpError": ScpError, "InferenceError": InferenceError}
_TREE_LINE = re.compile(r"^(?P<indent> *(?:[│├└─] *)*)(?P<name>[A-Z]\w*)\b")


def _module_names() -> list[str]:
    names = []
    for path in sorted(NODE_DIR.rglob("*.py")):
        parts = path.relative_to(NODE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _module_names():
        path = NODE_DIR.parent.joinpath(*name.split("."))
        source = (path / "__init__.py") if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(source.read_text(encoding="utf-8"))
        top = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        nested = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)} - top
        assert not [n for n in nested if n.endswith(("Error", "Exception"))], (
            f"{name}: define exception classes at module level: {sorted(nested)}"
        )
        if name.endswith("__main__"):
            # importing runs the command; such modules must not define classes at all
            assert not top, f"{name}: move {sorted(top)} out of the __main__ module"
            continue
        module = importlib.import_module(name)
        for cls_name in top:
            obj = getattr(module, cls_name)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                assert cls_name not in found, f"two exception classes named {cls_name}"
                found[cls_name] = obj
    return found


EXCEPTIONS = _exception_classes()


def _drawing() -> list[tuple[int, str]]:
    """(column, name) of every class named in the literal blocks of node/errors.py's docstring."""
    doc = node.errors.__doc__ or ""
    rows: list[tuple[int, str]] = []
    in_block = False
    for line in doc.splitlines():
        if line.rstrip().endswith("::"):
            in_block = True
            continue
        if in_block and line and not line.startswith(" "):
            in_block = False
        if in_block and line.strip():
            m = _TREE_LINE.match(line)
            assert m, f"cannot read drawing line {line!r}"
            rows.append((len(m["indent"]), m["name"]))
    return rows


def test_walk_found_the_tree() -> None:
    # guard against a walk that silently finds nothing
    assert {"NodeError", "ConfigError", "SrError", "AuditError"} <= set(EXCEPTIONS)


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_every_node_error_descends_from_node_error(name: str) -> None:
    cls = EXCEPTIONS[name]
    assert issubclass(cls, NodeError), (
        f"{cls.__module__}.{name} does not descend from node.errors.NodeError"
    )


def test_drawing_names_every_error_and_nothing_else() -> None:
    drawn = [name for _, name in _drawing()]
    assert len(drawn) == len(set(drawn)), "a class is drawn twice"
    missing = set(EXCEPTIONS) - set(drawn)
    assert not missing, f"node/errors.py's drawing lacks {sorted(missing)}"
    unknown = set(drawn) - set(EXCEPTIONS) - set(FOREIGN_ROOTS)
    assert not unknown, f"node/errors.py draws classes that do not exist: {sorted(unknown)}"


def test_drawing_shows_each_class_under_its_base() -> None:
    known = {**EXCEPTIONS, **FOREIGN_ROOTS}
    stack: list[tuple[int, str]] = []
    for column, name in _drawing():
        while stack and stack[-1][0] >= column:
            stack.pop()
        cls = known[name]
        if stack:
            parent = known[stack[-1][1]]
            assert parent in cls.__bases__, f"{name} is drawn under {parent.__name__}"
        else:
            assert name in ("NodeError", *FOREIGN_ROOTS), f"{name} is drawn as a root"
        stack.append((column, name))


# --- the CLI's one mapping (node.cli.errors) ---------------------------------------------------


def test_cli_maps_every_node_error_and_the_foreign_roots() -> None:
    from node.cli.errors import CAUGHT, exit_for

    for cls in (*EXCEPTIONS.values(), *FOREIGN_ROOTS.values()):
        assert issubclass(cls, CAUGHT) and exit_for(cls.__new__(cls)) is not None, cls


def test_cli_table_walks_the_mro(capsys: pytest.CaptureFixture[str]) -> None:
    from node.audit import AuditDetailError
    from node.cli.errors import report
    from node.config import ConfigError
    from node.deid import OptionError

    assert report(ConfigError("x.yaml", ["scp.port: bad"])) == 2
    assert capsys.readouterr().err.startswith("config error: x.yaml: 1 problem(s)")
    assert report(AuditDetailError("refused")) == 1  # AuditError's row, not ValueError's
    assert capsys.readouterr().err == "error: refused\n"
    assert report(OptionError("unknown option")) == 1  # NodeError's row
    assert report(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == "error: unknown option\n"
    with pytest.raises(ZeroDivisionError):  # unmapped: a bug, keeps its traceback
        report(ZeroDivisionError("x"))


def test_reported_as_marks_the_step(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli.errors import CommandError, CommandUsageError, report, reported_as

    with pytest.raises(CommandUsageError) as usage:
        with reported_as("error", KeyError, usage=True):
            raise KeyError("unknown destination 'x'")
    assert isinstance(usage.value.__cause__, KeyError)
    assert report(usage.value) == 2
    assert capsys.readouterr().err == "error: unknown destination 'x'\n"
    with pytest.raises(CommandError) as failed:
        with reported_as(lambda exc: f"f: unreadable ({type(exc).__name__})", OSError):
            raise FileNotFoundError("/secret/path")
    assert not isinstance(failed.value, CommandUsageError)
    assert report(failed.value) == 1
    assert capsys.readouterr().err == "f: unreadable (FileNotFoundError)\n"
    with pytest.raises(ValueError):  # types the step does not name pass through unchanged
        with reported_as("error", KeyError):
            raise ValueError("x")
