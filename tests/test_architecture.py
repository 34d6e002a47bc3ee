"""Which way imports go between the project's packages (issue #11, docs/architecture.md).

The rooms, and the only doors between them::

    node ──(names in scp.__all__)──────────> scp ─────────┐
      │                                                   ├──> durable_io (imports no project code)
      └───(names in secure_infer.__all__)──> secure_infer ┘
                                             ├── hospital/ ─┐
                                             ├── vendor/  ──┴──> shared core (secure_infer/*.py)
                                             (hospital and vendor never import each other)

The source is read with :mod:`ast`, not imported: an import inside a function or under
``TYPE_CHECKING`` counts like any other. Code under test is imported only to read a package's
``__all__``. The last two tests run the vendor's entry point with ``node`` made unimportable, as
a vendor installs it: without the hospital's package.
"""

from __future__ import annotations

import ast
import importlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.scp.test_scp_tls import make_pki
from tests.support.peers import free_port

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("durable_io", "node", "scp", "secure_infer")


# -- reading imports ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One import statement's target, made absolute."""

    where: str  # "path/to/file.py:line", for the failure message
    module: str  # the module named (relative imports resolved)
    names: tuple[str, ...] | None  # ``from module import names``; None for ``import module``

    def targets(self) -> Iterator[str]:
        """Every dotted name this import may bind: the module, and ``module.name`` for each."""
        yield self.module
        for name in self.names or ():
            yield f"{self.module}.{name}"

    def reaches(self, package: str) -> bool:
        """True if this import loads ``package`` or anything inside it."""
        return any(t == package or t.startswith(package + ".") for t in self.targets())


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> Iterator[Import]:
    """Every import in one source file, with relative imports resolved against its package."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(root).as_posix()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(f"{where}:{node.lineno}", alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names = tuple(alias.name for alias in node.names)
            yield Import(f"{where}:{node.lineno}", module, names)


def sources(package: str, root: Path = ROOT) -> list[Path]:
    """The ``.py`` files of a package directory (none if it does not exist yet)."""
    top = root / package
    return sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)


def violations(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """``file:line -> target`` for each import in ``package`` that reaches a forbidden one."""
    return [
        f"{imp.where} imports {imp.module}"
        for path in sources(package, root)
        for imp in imports_of(path, root)
        for target in forbidden
        if imp.reaches(target)
    ]


def public_names(package: str) -> set[str]:
    """A package's ``__all__`` (secure_infer computes it lazily; importing it is cheap)."""
    return set(importlib.import_module(package).__all__)


def deep_imports(of: str, root: Path = ROOT) -> list[str]:
    """Imports in ``node`` of ``of`` that are not ``from of import <name in of.__all__>``."""
    allowed = public_names(of)
    bad = []
    for path in sources("node", root):
        for imp in imports_of(path, root):
            if not imp.reaches(of):
                continue
            if imp.names is None:  # ``import scp`` is fine, ``import scp.spool`` is not
                if imp.module != of:
                    bad.append(f"{imp.where} imports {imp.module}")
            elif imp.module != of:
                bad.append(f"{imp.where} imports from {imp.module}")
            else:
                bad += [f"{imp.where} imports {of}.{n}" for n in imp.names if n not in allowed]
    return bad


# -- the rules ---------------------------------------------------------------------------------
def test_scp_is_entered_only_through_its_public_names() -> None:
    assert deep_imports("scp") == []


def test_secure_infer_is_entered_only_through_its_public_names() -> None:
    assert deep_imports("secure_infer") == []


@pytest.mark.parametrize("package", ["scp", "secure_infer"])
def test_libraries_never_import_node(package: str) -> None:
    assert violations(package, ("node",)) == []


def test_scp_and_secure_infer_do_not_import_each_other() -> None:
    assert violations("scp", ("secure_infer",)) == []
    assert violations("secure_infer", ("scp",)) == []


def test_durable_io_imports_nothing_of_the_project() -> None:
    assert violations("durable_io", ("node", "scp", "secure_infer")) == []


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_never_imports_the_tests(package: str) -> None:
    assert violations(package, ("tests",)) == []


@pytest.mark.parametrize(
    ("side", "other"),
    [("hospital", "secure_infer.vendor"), ("vendor", "secure_infer.hospital")],
)
def test_hospital_and_vendor_do_not_import_each_other(side: str, other: str) -> None:
    # Only what exists is checked: before the split there is nothing on either side.
    assert violations(f"secure_infer/{side}", (other,)) == []


def test_the_checks_see_a_broken_rule(tmp_path: Path) -> None:
    """The walkers above find violations (so an empty list means something)."""
    files = {
        "secure_infer/__init__.py": "",
        "secure_infer/hospital/__init__.py": "",
        "secure_infer/hospital/a.py": "from ..vendor import pool\n",
        "secure_infer/hospital/b.py": "def f():\n    from secure_infer import vendor\n",
        "secure_infer/hospital/c.py": "from secure_infer.params import X\n",  # shared core: ok
        "secure_infer/vendor/__init__.py": "from secure_infer.hospital.client import C\n",
        "node/__init__.py": "",
        "node/x.py": "import scp.spool\nfrom scp.errors import ScpError\nfrom . import y\n",
        "node/y.py": "from scp import Spool, not_public\nimport scp\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert violations("secure_infer/hospital", ("secure_infer.vendor",), tmp_path) == [
        "secure_infer/hospital/a.py:1 imports secure_infer.vendor",
        "secure_infer/hospital/b.py:2 imports secure_infer",
    ]
    assert violations("secure_infer/vendor", ("secure_infer.hospital",), tmp_path) == [
        "secure_infer/vendor/__init__.py:1 imports secure_infer.hospital.client"
    ]
    assert deep_imports("scp", tmp_path) == [
        "node/x.py:1 imports scp.spool",
        "node/x.py:2 imports from scp.errors",
        "node/y.py:1 imports scp.not_public",
    ]


# -- the vendor without node -------------------------------------------------------------------
VENDOR = [sys.executable, "-m", "secure_infer.vendor"]
DEMO_MODEL = ROOT / "secure_infer" / "models" / "demo-lesion" / "manifest.yaml"


def without_node(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment in which ``import node`` fails, and a working directory outside the repo.

    The working directory matters: ``python -m`` puts it first on ``sys.path``.
    """
    poison = tmp_path / "poison"
    (poison / "node").mkdir(parents=True)
    (poison / "node" / "__init__.py").write_text(
        "raise ImportError('the vendor must not import node')\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{poison}{os.pathsep}{ROOT}")
    return env, poison


def test_vendor_entry_point_runs_without_node(tmp_path: Path) -> None:
    env, cwd = without_node(tmp_path)
    r = subprocess.run(
        [*VENDOR, "--help"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "usage" in r.stdout.lower()


def test_vendor_serves_health_over_mutual_tls_without_node(tmp_path: Path) -> None:
    env, cwd = without_node(tmp_path)
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)  # ca, server (SAN 127.0.0.1) and client, all from one throw-away CA
    port = free_port()
    config = tmp_path / "vendor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port},
                "tls": {
                    "cert": str(pki / "server.crt"),
                    "key": str(pki / "server.key"),
                    "client_ca": str(pki / "ca.crt"),
                },
                "models": [str(DEMO_MODEL)],
                "state_dir": str(tmp_path / "state"),
                "limits": {"workers": 1, "queue_size": 0},
                "log_level": "INFO",
            }
        )
    )
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    log_path = tmp_path / "vendor.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*VENDOR, "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        try:
            health = None
            deadline = time.monotonic() + 120
            with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=10) as c:
                while health is None and time.monotonic() < deadline:
                    assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                    try:
                        health = c.get("/v1/health")
                    except httpx.TransportError:
                        time.sleep(0.2)
            assert health is not None, log_path.read_text(errors="replace")[-3000:]
            assert health.status_code == 200, health.text
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
