"""pyproject.toml declares what the code imports: the core alone in the base dependencies,
each app's own in its extra (``pip install -e '.[vision]'``), and ``dev`` holds them all.

Imports are read with ``ast`` (also those inside functions) and mapped to the distributions
that provide them with ``importlib.metadata.packages_distributions()``, so an import counts
only once the environment has it installed (``make install`` installs ``.[dev]``).
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
#: Top-level packages of this repository (never a third-party import).
FIRST_PARTY = frozenset({"apps", "bench", "core", "fused_kernels", "tests"})
#: The core: what ``pip install specialist-finetuners`` alone must run.
CORE = ("core", "fused_kernels")
#: Every app package under apps/ (a folder with an ``__init__.py``).
APPS = sorted(p.parent.name for p in (REPO / "apps").glob("*/__init__.py"))


def canonical(name: str) -> str:
    """A distribution name in PEP 503 normal form (``Open_CLIP.torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(requirement: str) -> tuple[str, list[str]]:
    """``"jsonargparse[signatures]>=4.32,<5"`` -> ``("jsonargparse", ["signatures"])``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
    assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
    extras = [e.strip() for e in (match[2] or "").split(",") if e.strip()]
    return canonical(match[1]), extras


@cache
def project() -> dict:
    """The ``[project]`` table of pyproject.toml."""
    return tomllib.loads(PYPROJECT.read_text())["project"]


def groups() -> dict[str, list[str]]:
    """``{extra (canonical): [requirement, ...]}`` of ``[project.optional-dependencies]``."""
    extras = project().get("optional-dependencies", {})
    return {canonical(name): list(reqs) for name, reqs in extras.items()}


def declared(extra: str | None = None) -> set[str]:
    """Canonical names installed by the base (``extra=None``) or by one extra alone.

    An extra naming this project (``specialist-finetuners[code,vision]``) brings those
    extras' requirements with it.
    """
    if extra is None:
        return {parse_requirement(r)[0] for r in project()["dependencies"]}
    names: set[str] = set()
    for requirement in groups()[canonical(extra)]:
        name, extras = parse_requirement(requirement)
        if name == canonical(project()["name"]):
            for inner in extras:
                names |= declared(inner)
        else:
            names.add(name)
    return names


def third_party_imports(*folders: str) -> dict[str, list[str]]:
    """``{top-level module: [file, ...]}`` of the absolute imports outside the standard
    library and this repository, in every ``.py`` file under ``folders`` (relative to the
    repository root)."""
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


@cache
def installed() -> dict[str, list[str]]:
    """``{top-level module: [distribution, ...]}`` of this environment (read once)."""
    return packages_distributions()


def distributions(module: str) -> set[str]:
    """Canonical names of the installed distributions that provide a top-level module."""
    return {canonical(d) for d in installed().get(module, [])}


def uncovered(imports: dict[str, list[str]], allowed: set[str]) -> dict[str, str]:
    """``{module: why}`` for each import no distribution in ``allowed`` provides."""
    problems = {}
    for module, files in sorted(imports.items()):
        providers = distributions(module)
        if not providers:
            problems[module] = f"not installed (imported by {files[0]})"
        elif not providers & allowed:
            problems[module] = f"from {sorted(providers)}, imported by {files[0]}"
    return problems


def test_the_core_needs_only_the_base_dependencies() -> None:
    missing = uncovered(third_party_imports(*CORE), declared())
    assert not missing, f"add to [project] dependencies: {missing}"


def test_the_base_holds_only_what_the_core_imports() -> None:
    provided = set().union(*(distributions(m) for m in third_party_imports(*CORE)))
    extra = sorted(declared() - provided)
    assert not extra, (
        f"{extra} are base dependencies that core/ and fused_kernels/ never import: move each "
        "to the extra of the app that imports it"
    )


@pytest.mark.parametrize("app", APPS)
def test_each_app_extra_covers_its_imports(app: str) -> None:
    assert canonical(app) in groups(), (
        f"pyproject.toml has no extra {app!r} ([project.optional-dependencies]): give the app "
        "one, listing what apps/{app} imports beyond the base dependencies"
    )
    missing = uncovered(third_party_imports(f"apps/{app}"), declared() | declared(app))
    assert not missing, f"add to the {app!r} extra: {missing}"


def test_dev_installs_every_app_and_the_test_tools() -> None:
    dev = declared("dev")
    for app in APPS:
        assert declared(app) <= dev, f"dev lacks {sorted(declared(app) - dev)} of {app!r}"
    assert {"pytest", "ruff"} <= dev
    missing = uncovered(third_party_imports("tests", "bench"), declared() | dev)
    assert not missing, f"add to the dev extra: {missing}"


def test_a_distribution_listed_twice_has_one_version_spec() -> None:
    specs: dict[str, set[str]] = {}
    for requirement in itertools.chain(project()["dependencies"], *groups().values()):
        name, _ = parse_requirement(requirement)
        rest = re.sub(r"^\s*[A-Za-z0-9._-]+\s*(\[[^\]]*\])?", "", requirement)
        specs.setdefault(name, set()).add(rest.replace(" ", ""))
    differing = {name: sorted(s) for name, s in specs.items() if len(s) > 1}
    assert not differing, f"one version spec per distribution, please: {differing}"
