"""The 48 real-person Debian TTS voices of the mini corpus and the packages that provide them.

Each voice was built from recordings of one real person (see ``shared/reference/tts_voices.md``).
Other Debian voices are reserved for independent evaluation and must not be added here.

Run as a script to print package names for ``install_tts.sh``::

    python3 tts_voices.py packages main|contrib
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class Voice:
    """One TTS voice: ``speaker`` is the corpus speaker id, ``name`` the engine's voice name."""

    speaker: str
    engine: str  # espeak (espeak-ng phonemes -> mbrola) | festival | flite | pico
    name: str
    gender: str
    package: str


def _mbrola(db: str, gender: str, english: bool) -> Voice:
    return Voice(f"mbrola_{db}", "espeak", f"mb-{db}-en" if english else f"mb-{db}", gender, f"mbrola-{db}")


# (database, gender, espeak-ng has an English "-en" mapping onto this person's diphones)
_MBROLA: Tuple[Tuple[str, str, bool], ...] = (
    ("af1", "m", True), ("br1", "m", False), ("br2", "f", False), ("br3", "m", False),
    ("ca1", "m", False), ("ca2", "m", False), ("cr1", "m", False), ("cz2", "m", False),
    ("de1", "f", True), ("de2", "m", True), ("de3", "f", True), ("de4", "m", True),
    ("de5", "f", True), ("de7", "f", False), ("en1", "m", False), ("fr1", "m", True),
    ("fr2", "f", False), ("fr3", "m", False), ("fr5", "m", False), ("fr6", "m", False),
    ("fr7", "m", False), ("gr1", "m", False), ("gr2", "m", True), ("ir1", "m", False),
    ("it4", "f", False), ("la1", "m", False), ("lt1", "m", False), ("lt2", "m", False),
    ("pl1", "f", True), ("ro1", "m", True), ("sw1", "m", True), ("tr2", "f", False),
    ("us2", "m", False),
)

VOICES: Tuple[Voice, ...] = tuple(_mbrola(*row) for row in _MBROLA) + (
    Voice("fest_kal", "festival", "kal_diphone", "m", "festvox-kallpc16k"),
    Voice("fest_ked", "festival", "ked_diphone", "m", "festvox-kdlpc16k"),
    Voice("fest_cs_krb", "festival", "czech_krb", "m", "festvox-czech-krb"),
    Voice("fest_fi_mv", "festival", "hy_fi_mv_diphone", "m", "festvox-suopuhe-mv"),
    Voice("fest_it_lp", "festival", "lp_diphone", "f", "festvox-italp16k"),
    Voice("fest_it_pc", "festival", "pc_diphone", "m", "festvox-itapc16k"),
    Voice("fest_rab", "festival", "rab_diphone", "m", "festvox-rablpc16k"),
    Voice("fest_don", "festival", "don_diphone", "m", "festvox-don"),
    Voice("fest_es_el", "festival", "el_diphone", "m", "festvox-ellpc11k"),
    Voice("flite_awb", "flite", "awb", "m", "flite"),
    Voice("flite_rms", "flite", "rms", "m", "flite"),
    Voice("pico_enus", "pico", "en-US", "f", "libttspico-utils"),
    Voice("pico_dede", "pico", "de-DE", "f", "libttspico-utils"),
    Voice("pico_eses", "pico", "es-ES", "f", "libttspico-utils"),
    Voice("pico_itit", "pico", "it-IT", "f", "libttspico-utils"),
)

VOICE_BY_SPEAKER: Dict[str, Voice] = {v.speaker: v for v in VOICES}

# Debian main: engines, festival lexicons and the voices' own language support, text, conversion.
MAIN_PACKAGES: Tuple[str, ...] = (
    "sox", "espeak-ng", "flite", "festival", "festlex-cmu", "festlex-poslex",
    "festvox-kallpc16k", "festvox-kdlpc16k", "festival-czech", "festvox-czech-krb",
    "festvox-suopuhe-common", "festvox-suopuhe-mv", "festlex-ifd", "festvox-italp16k",
    "festvox-itapc16k", "fortunes-min", "fortunes", "ffmpeg",
)


def contrib_packages() -> List[str]:
    """Packages from Debian contrib/non-free: mbrola, its voices, three festival voices, SVOX pico."""
    out = ["mbrola"]
    for voice in VOICES:
        if voice.package not in MAIN_PACKAGES and voice.package not in out:
            out.append(voice.package)
    return out


def speakers_of_package(package: str) -> List[str]:
    """Speaker ids whose voice a package provides (``mbrola`` provides the engine of all MBROLA voices)."""
    if package == "mbrola":
        return [v.speaker for v in VOICES if v.engine == "espeak"]
    return [v.speaker for v in VOICES if v.package == package]


def _main(argv: List[str]) -> int:
    if len(argv) == 2 and argv[0] == "packages" and argv[1] in ("main", "contrib"):
        print(" ".join(MAIN_PACKAGES if argv[1] == "main" else contrib_packages()))
        return 0
    if len(argv) == 2 and argv[0] == "speakers":
        print(" ".join(speakers_of_package(argv[1])))
        return 0
    print("usage: tts_voices.py packages main|contrib | speakers PACKAGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
