"""Speak texts with the Debian TTS engines; each output is a 16 kHz mono 16-bit wav.

Rate (a speed factor, > 1 is faster) and pitch (semitones) go through each engine's own controls
where it has them, else through sox:

=========  ===============================================  ================  ==============
engine     synthesis                                        rate              pitch
=========  ===============================================  ================  ==============
espeak     ``espeak-ng --pho`` then ``mbrola`` (two steps:  ``mbrola -t``     ``mbrola -f``
           byte-identical output, unlike espeak's own pipe)
festival   one process per speaker running a Scheme script  Duration_Stretch  ``sox pitch``
flite      ``flite -voice``                                 duration_stretch  f0_shift
pico       ``pico2wave`` with SVOX markup                   ``<speed>``       ``<pitch>``
=========  ===============================================  ================  ==============

A request carries candidate texts; the first one the engine speaks wins (festival voices fail on
a few texts with an SIOD error). sox then resamples to 16 kHz and peak-normalises to -1 dBFS.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import soundfile as sf

from tts_voices import MAIN_PACKAGES, Voice

SAMPLE_RATE = 16000
MIN_SECONDS = 0.3  # a shorter output means the engine failed on the text
INSTALL_HINT = "install them with: sudo egs/mini/local/install_tts.sh --enable-contrib-nonfree"

_BINARIES: Dict[str, Tuple[Tuple[str, str], ...]] = {  # engine -> (binary, Debian package)
    "espeak": (("espeak-ng", "espeak-ng"), ("mbrola", "mbrola")),
    "festival": (("festival", "festival"),),
    "flite": (("flite", "flite"),),
    "pico": (("pico2wave", "libttspico-utils"),),
}


class SynthesisError(RuntimeError):
    """An engine is missing or could not speak any candidate text."""


@dataclass(frozen=True)
class SynthRequest:
    """One utterance to speak."""

    key: str
    texts: Tuple[str, ...]  # candidate texts, in order of preference
    rate: float  # speed factor, > 1 is faster
    pitch: float  # semitones
    out_path: str  # 16 kHz mono 16-bit wav


def _voice_file_missing(voice: Voice) -> bool:
    if voice.engine == "espeak":
        db = voice.name.split("-")[1]  # mb-de1-en -> de1
        return not Path(f"/usr/share/mbrola/{db}/{db}").is_file()
    if voice.engine == "festival":
        return not any(Path("/usr/share/festival/voices").glob(f"*/{voice.name}"))
    return False  # flite's and pico's voices come with their binary


def check_voices(voices: Sequence[Voice]) -> None:
    """Raise ``SynthesisError`` listing every missing binary or voice with the package to install."""
    problems: Dict[str, str] = {}  # package -> what is missing
    if shutil.which("sox") is None:
        problems["sox"] = "the sox binary"
    for voice in voices:
        for binary, package in _BINARIES[voice.engine]:
            if shutil.which(binary) is None:
                problems[package] = f"the {binary} binary"
        if _voice_file_missing(voice):
            problems[voice.package] = f"the {voice.engine} voice {voice.name} (speaker {voice.speaker})"
    if problems:
        lines = [f"  {package}{'' if package in MAIN_PACKAGES else ' (Debian contrib/non-free)'}: {what}"
                 for package, what in sorted(problems.items())]
        raise SynthesisError("missing TTS packages:\n" + "\n".join(lines) + f"\n{INSTALL_HINT}")


def _run(cmd: Sequence[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), input=stdin, capture_output=True, check=False)


def _failure(voice: Voice, request: SynthRequest, detail: bytes | str) -> SynthesisError:
    detail = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else detail
    tail = detail.strip().splitlines()[-3:]
    return SynthesisError(f"{voice.engine} voice {voice.name} could not speak any of the "
                          f"{len(request.texts)} candidate texts of {request.key}: {' | '.join(tail)}")


def _to_16k(native: Path, out_path: str, pitch_cents: float = 0.0) -> bool:
    """sox: any wav -> 16 kHz mono 16-bit at -1 dBFS peak, optionally pitch-shifted; False if too short."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.wav")
    effects = (["pitch", f"{pitch_cents:.1f}"] if pitch_cents else []) + ["rate", "-v", str(SAMPLE_RATE),
                                                                          "gain", "-n", "-1"]
    # -R: repeatable (fixed seeds); -D: no dither, so the output depends on the input only
    proc = _run(["sox", "-R", "-D", "-V1", str(native), "-c", "1", "-b", "16", "-e", "signed-integer",
                 str(tmp), *effects])
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise SynthesisError(f"sox failed on {native}: {proc.stderr.decode('utf-8', 'replace').strip()}")
    if sf.info(str(tmp)).frames < MIN_SECONDS * SAMPLE_RATE:
        tmp.unlink()
        return False
    tmp.replace(out)
    return True


def _speak_espeak(voice: Voice, text: str, rate: float, pitch: float, native: Path) -> bytes:
    """espeak-ng writes MBROLA phonemes, mbrola renders them; returns stderr ('' on success)."""
    pho = _run(["espeak-ng", "-v", voice.name, "-q", "--pho", "--stdin"], text.encode())
    if pho.returncode != 0 or not pho.stdout.strip():
        return pho.stderr or b"espeak-ng wrote no phonemes"
    db = voice.name.split("-")[1]
    wav = _run(["mbrola", "-e", "-t", f"{1 / rate:.4f}", "-f", f"{2 ** (pitch / 12):.4f}",
                f"/usr/share/mbrola/{db}/{db}", "-", str(native)], pho.stdout)
    return b"" if wav.returncode == 0 and native.is_file() else (wav.stderr or b"mbrola failed")


def _speak_flite(voice: Voice, text: str, rate: float, pitch: float, native: Path) -> bytes:
    proc = _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / rate:.4f}",
                 "--setf", f"f0_shift={2 ** (pitch / 12):.4f}", "-t", text, "-o", str(native)])
    return b"" if proc.returncode == 0 and native.is_file() else (proc.stderr or b"flite failed")


def _speak_pico(voice: Voice, text: str, rate: float, pitch: float, native: Path) -> bytes:
    speed, pitch_level = round(100 * rate), round(100 * 2 ** (pitch / 12))
    markup = f"<speed level='{speed}'><pitch level='{pitch_level}'>{text}</pitch></speed>"
    proc = _run(["pico2wave", "-l", voice.name, "-w", str(native), markup])
    return b"" if proc.returncode == 0 and native.is_file() else (proc.stderr or b"pico2wave failed")


_SPEAK_ONE = {"espeak": _speak_espeak, "flite": _speak_flite, "pico": _speak_pico}


def _synthesize_each(voice: Voice, requests: Sequence[SynthRequest], tmp: Path) -> List[str]:
    """Engines run once per utterance: try each candidate text in turn."""
    speak = _SPEAK_ONE[voice.engine]
    chosen = []
    for i, request in enumerate(requests):
        native, error = tmp / f"{i:05d}.wav", b""
        for text in request.texts:
            native.unlink(missing_ok=True)
            error = speak(voice, text, request.rate, request.pitch, native)
            if not error and _to_16k(native, request.out_path):
                chosen.append(text)
                break
            error = error or b"output shorter than the minimum"
        else:
            raise _failure(voice, request, error)
    return chosen


_FESTIVAL_SYNTH_FIRST = """
(define (synth_first index path texts)
  "Save the first of TEXTS that synthesises to PATH; print INDEX and the candidate used (-1: none)."
  (let ((candidate 0) (done nil) (text nil))
    (while (and texts (not done))
      (set! text (car texts))
      (unwind-protect
        (begin (utt.save.wave (utt.synth (eval (list 'Utterance 'Text text))) path 'riff) (set! done t))
        nil)
      (if (not done) (begin (set! candidate (+ 1 candidate)) (set! texts (cdr texts)))))
    (format t "@@synth %d %d\\n" index (if done candidate -1))))
"""


def _synthesize_festival(voice: Voice, requests: Sequence[SynthRequest], tmp: Path) -> List[str]:
    """One festival process speaks all requests of the speaker; sox then shifts the pitch."""
    lines = [f"(voice_{voice.name})", _FESTIVAL_SYNTH_FIRST]
    for i, request in enumerate(requests):
        texts = " ".join(f'"{text}"' for text in request.texts)  # tts_text keeps quotes and backslashes out
        lines.append(f"(Parameter.set 'Duration_Stretch {1 / request.rate:.4f})")
        lines.append(f"(synth_first {i} \"{tmp / f'{i:05d}.wav'}\" '({texts}))")
    script = tmp / "synth.scm"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = _run(["festival", "-b", str(script)])
    used = {int(i): int(c) for _, i, c in (line.split() for line in proc.stdout.decode().splitlines()
                                            if line.startswith("@@synth "))}
    chosen = []
    for i, request in enumerate(requests):
        candidate = used.get(i, -1)
        if candidate < 0 or not _to_16k(tmp / f"{i:05d}.wav", request.out_path, 100 * request.pitch):
            raise _failure(voice, request, proc.stderr if candidate < 0 else "output shorter than the minimum")
        chosen.append(request.texts[candidate])
    return chosen


def synthesize(voice: Voice, requests: Sequence[SynthRequest], work_dir: str | Path) -> List[str]:
    """Speak every request with ``voice``; returns the text used for each (one of its candidates).

    Intermediate files live in a temporary folder under ``work_dir``, removed afterwards.
    """
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=f"{voice.speaker}.") as tmp:
        if voice.engine == "festival":
            return _synthesize_festival(voice, requests, Path(tmp))
        return _synthesize_each(voice, requests, Path(tmp))
