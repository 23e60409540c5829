"""Text measures of a transcript, computed at commit where the transcript meets the segment."""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Optional


def normalise_text(text: str) -> str:
    """Lower case, NFKC, punctuation and symbols gone, whitespace collapsed: the text that the
    speech rate counts and the near-duplicate check compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(c if unicodedata.category(c)[0] in "LNM" or c == "'" else " " for c in text)
    return " ".join(kept.split())


def chars_per_second(text: str, seconds: float) -> Optional[float]:
    """Spoken characters (letters and digits of the normalised text, no spaces) per second."""
    if seconds <= 0:
        return None
    return len(re.sub(r"[\s']", "", normalise_text(text))) / seconds


# The commit metrics (schemas/metrics.py, stage "commit") computed here, by name: each takes the
# transcript and the segment's seconds. (near_duplicate_of needs the unit's other samples:
# `stages.commit.decide` sets it.)
TEXT: dict[str, Callable[[str, float], Optional[float]]] = {
    "chars_per_second": chars_per_second,
}
