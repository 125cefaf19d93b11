"""Sentences to speak: Debian's fortune files, cut into plain sentences of 5-22 words."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Mild categories only (packages fortunes-min and fortunes).
FORTUNE_FILES: Tuple[str, ...] = (
    "fortunes", "literature", "riddles", "wisdom", "science", "people", "work", "education",
)
MIN_WORDS, MAX_WORDS = 5, 22

# Letters and simple punctuation only: every engine reads it, and festival's Scheme strings need no escaping.
_PLAIN_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;:'-]*[A-Za-z][.!?]")
_ATTRIBUTION = re.compile(r"^\s*--")  # "    -- Mark Twain" ends the quoted text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ABBREVIATION_END = re.compile(r"\b[A-Z][a-z]?\.$")  # "Mr." or an initial: a split in mid-sentence
_RIDDLE_MARK = re.compile(r"(?:^|(?<=\s))[QA]:\s+")  # "Q: ... A: ..." riddles


def _sentences(fortune: str) -> List[str]:
    lines = []
    for line in fortune.splitlines():
        if _ATTRIBUTION.match(line):
            break
        lines.append(line)
    body = re.sub(r"\s+", " ", " ".join(lines).replace('"', "")).strip()
    body = _RIDDLE_MARK.sub("", body)
    return [s for s in _SENTENCE_END.split(body)
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS and _PLAIN_SENTENCE.fullmatch(s)
            and "--" not in s and not _ABBREVIATION_END.search(s)]


@lru_cache(maxsize=None)
def sentence_pool(fortune_dir: str = str(FORTUNE_DIR)) -> Tuple[str, ...]:
    """Sorted unique sentences of the mild fortune files (about 4,700 with Debian 12's fortunes)."""
    pool = set()
    for name in FORTUNE_FILES:
        path = Path(fortune_dir) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: fortune file not found; install the Debian packages fortunes-min and fortunes "
                "(egs/mini/local/install_tts.sh)")
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in re.split(r"^%\n", text, flags=re.MULTILINE):
            pool.update(_sentences(fortune))
    return tuple(sorted(pool))


def draw_text(rng: np.random.Generator, pool: Sequence[str], max_sentences: int = 3) -> str:
    """1 to ``max_sentences`` distinct sentences of ``pool``, joined by spaces."""
    count = int(rng.integers(1, max_sentences + 1))
    return " ".join(pool[i] for i in rng.choice(len(pool), size=count, replace=False))
