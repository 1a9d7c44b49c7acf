"""The embedded corpus: the Python standard library's own source, found through ``sysconfig``.

The library's ``.py`` files are real, varied, well-documented Python that ships with every
interpreter, so the default pipeline needs no download. Modules are split deterministically
(by a hash of their dotted name, not by random state) into a training part and a held-out
part; the held-out modules are never seen in pre-training or fine-tuning and serve for the
validation/test sets, FIM exact match and the forgetting perplexity.

Test suites, GUI code and vendored packages are skipped (``SKIP_TOP_LEVEL``).
"""

from __future__ import annotations

import ast
import doctest
import hashlib
import os
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Top-level stdlib folders/modules left out of the corpus (tests, GUI, vendored, generated).
SKIP_TOP_LEVEL = frozenset(
    {
        "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
        "dist-packages", "__pycache__", "venv", "pydoc_data", "turtle.py", "this.py",
        "antigravity.py",
    }
)  # fmt: skip


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        raise FileNotFoundError(
            f"the standard library source was not found at {str(root)!r} (no os.py there); "
            "the embedded code corpus needs an interpreter installed with its .py sources, "
            "or set data.source: jsonl and data.paths to JSONL files of your own."
        )
    return root


def module_name(root: Path, path: Path) -> str:
    """``<root>/email/mime/text.py`` -> ``email.mime.text``; ``pkg/__init__.py`` -> ``pkg``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def list_modules(root: Path | None = None) -> dict[str, Path]:
    """Dotted module name -> source file, for every kept ``.py`` file (sorted by name)."""
    root = stdlib_root() if root is None else Path(root)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        if (
            rel and (rel[0] in SKIP_TOP_LEVEL or rel[0].startswith("config-") or "tests" in rel)
        ) or "test" in rel:
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".py") or (not rel and name in SKIP_TOP_LEVEL):
                continue
            path = Path(dirpath) / name
            found[module_name(root, path)] = path
    return dict(sorted(found.items()))


def stable_fraction(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``key`` and ``salt`` (a hash, not random state)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(name: str, fraction: float, salt: str = "code-heldout") -> bool:
    """Whether module ``name`` is held out: a stable hash of its top-level package.

    Whole packages go to one side, so ``email.mime.text`` is never trained on while
    ``email.mime.base`` is evaluated. ``fraction`` is the expected share held out.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction={fraction!r} must lie in [0, 1).")
    return stable_fraction(name.split(".")[0], salt) < fraction


def held_out_part(name: str) -> str:
    """``"val"`` or ``"test"``: the part held-out module ``name`` goes to (a stable hash of
    the module's own name, so a package's modules spread over both)."""
    return "val" if stable_fraction(name, "code-val") < 0.5 else "test"


def split_modules(
    modules: dict[str, Path], held_out_fraction: float = 0.15
) -> tuple[dict[str, Path], dict[str, Path]]:
    """``(train, held_out)`` module maps, split by :func:`is_held_out`."""
    train = {k: v for k, v in modules.items() if not is_held_out(k, held_out_fraction)}
    held = {k: v for k, v in modules.items() if is_held_out(k, held_out_fraction)}
    if modules and (not train or not held):
        raise ValueError(
            f"held_out_fraction={held_out_fraction} left one side empty ({len(train)} train, "
            f"{len(held)} held-out modules); pick a fraction between 0.05 and 0.5."
        )
    return train, held


def read_source(path: Path, check: bool = True) -> str | None:
    """A module's source text, or ``None`` when it is not UTF-8 (or, with ``check``, does
    not parse)."""
    try:
        text = path.read_text(encoding="utf-8")
        if check:
            ast.parse(text)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return None
    return text


@dataclass(frozen=True)
class Function:
    """One top-level function or method, cut out of a module's source.

    ``source`` is the whole definition (decorators excluded) dedented to column 0;
    ``header`` is its ``def`` line(s) up to the colon, ``docstring`` the raw docstring text
    (as written, quotes and indentation included) or ``""``, and ``body`` what follows the
    docstring (or the whole body when there is none).
    """

    module: str
    qualname: str
    source: str
    header: str
    docstring: str
    body: str
    doc_text: str


def _dedent_block(lines: list[str], indent: int) -> list[str]:
    return [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines]


def iter_functions(module: str, source: str, max_lines: int = 60) -> Iterator[Function]:
    """Every function/method of ``source`` with at most ``max_lines`` lines."""
    lines = source.splitlines()
    tree = ast.parse(source)
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            start, end = child.lineno, child.end_lineno or child.lineno
            if end - start + 1 > max_lines or not child.body:
                continue
            indent = child.col_offset
            block = _dedent_block(lines[start - 1 : end], indent)
            first_body = child.body[0]
            doc_node = (
                first_body
                if isinstance(first_body, ast.Expr)
                and isinstance(first_body.value, ast.Constant)
                and isinstance(first_body.value.value, str)
                else None
            )
            body_start = child.body[1].lineno if doc_node and len(child.body) > 1 else None
            header_end = first_body.lineno - start  # lines before the first body statement
            if header_end < 1:  # one-line def (``def f(): return 1``)
                continue
            header = "\n".join(block[:header_end])
            if doc_node is not None:
                doc_end = (doc_node.end_lineno or doc_node.lineno) - start + 1
                docstring = "\n".join(block[header_end:doc_end])
                body = "\n".join(block[body_start - start :]) if body_start else ""
                doc_text = ast.get_docstring(child) or ""
            else:
                docstring, doc_text = "", ""
                body = "\n".join(block[header_end:])
            yield Function(
                module=module,
                qualname=f"{prefix}{child.name}",
                source="\n".join(block) + "\n",
                header=header,
                docstring=docstring,
                body=body + "\n" if body else "",
                doc_text=doc_text,
            )


def doctest_asserts(function: Function, max_asserts: int = 6) -> list[str]:
    """Assert-style tests from a function's doctest examples (``>>> f(x)`` / ``y``).

    Each example with a one-line source that calls the function by name and a one-line
    expected value becomes ``assert <source> == <expected>``; examples whose output is not
    a Python literal (reprs like ``<object at 0x...>``, tracebacks, printed text) and
    examples that use names set up by earlier examples (``s.ratio()``) are skipped.
    """
    if ">>>" not in function.doc_text:
        return []
    name = function.qualname.rsplit(".", 1)[-1]
    call = re.compile(rf"^(?:[A-Za-z_][\w.]*\.)?{re.escape(name)}\(")
    try:
        examples = doctest.DocTestParser().get_examples(function.doc_text)
    except ValueError:
        return []
    out = []
    for ex in examples:
        src, want = ex.source.strip(), ex.want.strip()
        if not want or "\n" in src or "\n" in want or not call.match(src):
            continue
        try:
            ast.literal_eval(want)
            ast.parse(src, mode="eval")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        out.append(f"assert {src} == {want}")
        if len(out) >= max_asserts:
            break
    return out
