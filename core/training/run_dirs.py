"""Remove the run directory a run created if it failed on bad input before writing anything.

The trainer creates ``<root>/version_<n>`` and writes ``config.yaml`` there as ``fit`` starts;
a run that then stops on bad input (a rejected optimizer argument, a missing data file)
would leave a run directory with nothing in it but its config. :class:`RunDirGuard` notes
what existed before the run and removes only what this run created and holds nothing of use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: Files a run writes before it has produced anything (they are removed with the directory).
BOOKKEEPING_FILES = frozenset({"config.yaml", "hparams.yaml", "metrics.csv"})


def holds_nothing_of_use(run_dir: Path) -> bool:
    """Whether ``run_dir`` has no file other than the top-level bookkeeping files."""
    for path in run_dir.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        if path.relative_to(run_dir).as_posix() not in BOOKKEEPING_FILES:
            return False
    return True


class RunDirGuard:
    """Remembers the run root's entries before a run, to clean up after it fails on bad input.

    Args:
        root: The directory the run directories go in (``trainer.default_root_dir`` or the
            logger's root), which may not exist yet.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.existing = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
        ancestor = self.root
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        self.first_existing = ancestor

    def clean(self, run_dir: str | Path | None) -> list[Path]:
        """Remove ``run_dir`` if this run created it and it holds nothing of use; then the
        parents up to ``root`` that this run created and that are now empty.

        Args:
            run_dir: The failed run's directory (the logger's ``log_dir``), ``None`` if unknown.

        Returns:
            The directories removed.
        """
        removed: list[Path] = []
        if run_dir is not None:
            run_dir = Path(run_dir).absolute()
            if (
                run_dir.parent == self.root
                and run_dir.name not in self.existing
                and run_dir.is_dir()
                and holds_nothing_of_use(run_dir)
            ):
                shutil.rmtree(run_dir, ignore_errors=True)  # another rank may be removing it
                removed.append(run_dir)
        directory = self.root
        while directory != self.first_existing and directory.is_dir():
            try:
                directory.rmdir()  # only if empty
            except OSError:
                break
            removed.append(directory)
            directory = directory.parent
        return removed
