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


def error_rate(text: str, reference: Optional[str], unit: str = "word") -> Optional[float]:
    """Word (or character) error rate of `text` against `reference`, both normalised as above (case
    and punctuation are no errors); None without a reference. A reference with no words, where the
    ASR heard some, scores 1.0 (a segment the alignment gave no reference words: nothing it says was
    read)."""
    if reference is None:
        return None
    ref, hyp = normalise_text(reference), normalise_text(text)
    if not ref:
        return 1.0 if hyp else None
    import jiwer

    if unit == "char":
        return jiwer.cer(ref, hyp)
    return jiwer.wer(ref, hyp)


# The commit metrics (schemas/metrics.py, stage "commit") computed here, by name: each takes the
# transcript, the segment's seconds and its reference transcript (None without one).
# (near_duplicate_of needs the unit's other samples: `stages.commit.decide` sets it.)
TEXT: dict[str, Callable[[str, float, Optional[str]], Optional[float]]] = {
    "chars_per_second": lambda text, seconds, reference: chars_per_second(text, seconds),
    "wer": lambda text, seconds, reference: error_rate(text, reference, "word"),
    "cer": lambda text, seconds, reference: error_rate(text, reference, "char"),
}
