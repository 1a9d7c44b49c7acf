"""The multitask JSONL format: one record per line, each naming its task.

Two shapes are accepted::

    {"task": "doc2body", "prompt": "def f(x):\\n    \\"\\"\\"Double x.\\"\\"\\"\\n",
     "completion": "    return 2 * x\\n"}
    {"task": "chat", "messages": [{"role": "system", "content": "..."},
                                  {"role": "user", "content": "..."},
                                  {"role": "assistant", "content": "..."}]}

The loss is taken only on the target tokens: the ``completion`` (plus the end-of-text
token), or every ``assistant`` turn (plus end-of-text). Prompt tokens, system and user turns
are context only. Files (``.jsonl``, UTF-8) and directories of them are read in sorted order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text
from core.textio import NotUtf8Error, loads_json, utf8_lines

ROLES = ("system", "user", "assistant")
#: How a chat turn is laid out as text: role tag line, then the content.
TURN_TEMPLATE = "<|{role}|>\n{content}\n"


@dataclass(frozen=True)
class Record:
    """One training example: a task id and either prompt/completion or chat turns."""

    task: str
    prompt: str = ""
    completion: str = ""
    messages: tuple[dict[str, str], ...] = field(default_factory=tuple)

    def segments(self) -> list[tuple[str, bool]]:
        """The text as ``(piece, is_target)`` pieces in order (the eos token comes after)."""
        if self.messages:
            out: list[tuple[str, bool]] = []
            for turn in self.messages:
                role, content = turn["role"], turn["content"]
                if role == "assistant":
                    out.append((f"<|{role}|>\n", False))
                    out.append((content, True))
                else:
                    out.append((TURN_TEMPLATE.format(role=role, content=content), False))
            return out
        return [(self.prompt, False), (self.completion, True)]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (the inverse of :func:`parse_record`)."""
        if self.messages:
            return {"task": self.task, "messages": [dict(m) for m in self.messages]}
        return {"task": self.task, "prompt": self.prompt, "completion": self.completion}


def parse_record(obj: Any, where: str = "record") -> Record:
    """Validate one decoded JSON object; errors name ``where`` (``file:line``) and the fix."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    task = obj.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError(f'{where}: missing "task" (a non-empty string naming the task).')
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f'{where}: "messages" must be a non-empty list of turns.')
        turns = []
        for i, m in enumerate(msgs):
            if not (
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            ):
                raise ValueError(
                    f'{where}: messages[{i}] must be {{"role": one of {list(ROLES)}, '
                    '"content": string}.'
                )
            turns.append({"role": m["role"], "content": m["content"]})
        if not any(t["role"] == "assistant" for t in turns):
            raise ValueError(f"{where}: messages have no assistant turn, so nothing to learn.")
        return Record(task=task, messages=tuple(turns))
    prompt, completion = obj.get("prompt", ""), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
        raise ValueError(
            f'{where}: a record needs "prompt" (string) and a non-empty "completion" (string), '
            'or "messages".'
        )
    return Record(task=task, prompt=prompt, completion=completion)


def jsonl_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and directories (their ``*.jsonl``, recursively, sorted) to files."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"data path {str(p)!r} is a folder without .jsonl files.")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(
                f"data path {str(p)!r} does not exist; give .jsonl files or folders of them."
            )
    return files


def read_jsonl(paths: Sequence[str | Path]) -> Iterator[Record]:
    """Records from JSONL files/directories; blank lines are skipped.

    Every problem is a one-line ``ValueError`` naming ``file:line``: a line that is not
    UTF-8, malformed JSON, JSON nested too deep to parse, or a record of the wrong shape.
    """
    for path in jsonl_files(paths):
        for lineno, line in utf8_lines(path):
            if isinstance(line, NotUtf8Error):
                raise line
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            yield parse_record(loads_json(line, where), where)


def write_jsonl(path: str | Path, records: Iterable[Record]) -> Path:
    """Write records as JSONL, atomically."""
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, text)
