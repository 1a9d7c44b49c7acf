"""One utterance of a corpus, whatever its source (embedded synthesis, Common Voice, FLEURS,
JSONL): the record every reader returns and the data module consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Every waveform inside the app is mono float32 at this rate.
SAMPLE_RATE = 16_000


@dataclass
class Utterance:
    """A transcribed clip.

    Attributes:
        id: Unique within its corpus (a file stem, a row id).
        language: ISO 639-1 code (``"is"``, ``"es"``), one of ``text.LANGUAGES``.
        text: The transcript, already normalised for ``language`` (``text.normalize``).
        speaker: Speaker (or voice) id; train and test speakers are disjoint where the
            source says who spoke.
        audio: The waveform (mono float32 at :data:`SAMPLE_RATE`), or ``None`` when it is
            still on disk at ``path`` (read lazily with ``audio.load_audio``).
        path: The audio file, for on-disk sources.
    """

    id: str
    language: str
    text: str
    speaker: str = ""
    audio: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio, when the waveform is in memory (else 0.0)."""
        return 0.0 if self.audio is None else len(self.audio) / SAMPLE_RATE
