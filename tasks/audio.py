"""One downloaded file -> checked 16 kHz mono audio -> FLAC, or a ClipError saying what is wrong.

ffmpeg decodes [start, start + duration] to 32-bit float (mono, 16 kHz) and the
samples are checked before anything is written, in this order:

    decoder error, or fewer samples than the file's header promises   corrupt
    no samples at all (e.g. the video is shorter than the start)       empty
    NaN or Inf samples                                                 non_finite
    shorter than min_duration_s                                        too_short
    shorter than min_segment_fraction of the segment                   truncated
    constant (silence or DC)                                           silent

Shorter than the segment but above both limits is ok, with the decoded
duration in the manifest.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # below this peak deviation (about -80 dBFS) a clip holds no usable sound
CONVERT_TIMEOUT_S = 300
HEADER_SLACK_S = 0.1  # decoders of lossy formats may end a little before the header's length


class ClipError(Exception):
    """A clip that cannot be downloaded or used: `kind` is the manifest's error_kind."""

    def __init__(self, kind: str, message: str, transient: bool = False):
        super().__init__(message)
        self.kind, self.transient = kind, transient


def _ffmpeg(*args: str, timeout: float = CONVERT_TIMEOUT_S) -> subprocess.CompletedProcess:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", *args]
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClipError("convert_timeout", f"ffmpeg took over {timeout} s") from None


def probe_duration(path: Path) -> float | None:
    """The duration the file's header declares (soundfile, else ffmpeg's 'Duration:'), or None."""
    try:
        info = sf.info(str(path))
        if 0 < info.frames < 2 ** 62 and info.samplerate > 0:
            return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError):
        pass
    done = _ffmpeg("-i", str(path), timeout=60)
    match = re.search(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", done.stderr)
    if not match:
        return None
    hours, minutes, seconds = (float(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def decode(source: Path, start_s: float, duration_s: float) -> np.ndarray:
    """[start, start + duration] of `source` as mono float32 at 16 kHz; a decoder error is `corrupt`."""
    if source.stat().st_size == 0:
        raise ClipError("empty", "downloaded file is empty (0 bytes)")
    # -t with a margin only stops decoding early: packet timestamps can be off by a packet or more,
    # so atrim (after resampling) makes the length sample-exact
    done = _ffmpeg("-loglevel", "error", "-ss", f"{start_s:.3f}", "-t", f"{duration_s + 1:.3f}", "-i", str(source),
                   "-vn", "-af", f"aresample={SAMPLE_RATE},atrim=end_sample={round(duration_s * SAMPLE_RATE)}",
                   "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_f32le", "-f", "f32le", "pipe:1")
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    message = _clean(lines[-1]) if lines else f"exit code {done.returncode}"
    if done.returncode != 0:
        with open(source, "rb") as f:
            head = f.read(512).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
            raise ClipError("not_audio", f"the download is a web page or text, not audio ({message})")
        if "does not contain any stream" in message or "matches no streams" in message:
            raise ClipError("not_audio", f"the download has no audio stream ({message})")
        if "invalid data" in message.lower():
            raise ClipError("corrupt", f"ffmpeg cannot decode the download: {message}")
        raise ClipError("convert_error", f"ffmpeg failed: {message}")
    if lines:
        raise ClipError("corrupt", f"decoder error in {source.name}: {message}")
    return np.frombuffer(done.stdout, dtype="<f4")


def _clean(message: str) -> str:
    return re.sub(r"^\[[^\]]*\]\s*", "", re.sub(r"\x1b\[[0-9;]*m", "", message)).strip()[:400]


def check_audio(audio: np.ndarray, expected_s: float | None, segment_s: float, min_duration_s: float,
                min_segment_fraction: float) -> float:
    """The checks of the module docstring; returns the duration in seconds."""
    seconds = len(audio) / SAMPLE_RATE
    if expected_s is not None and seconds < expected_s - HEADER_SLACK_S - 0.02 * expected_s:
        raise ClipError("corrupt", f"decoded {seconds:.2f} s where the file's header promises {expected_s:.2f} s: "
                                   "the file is cut short or damaged")
    if len(audio) == 0:
        raise ClipError("empty", "no audio in the segment (0 samples): the video may be shorter than its start")
    finite = np.isfinite(audio)
    if not finite.all():
        raise ClipError("non_finite", f"{(~finite).sum()} of {len(audio)} samples are NaN or Inf")
    if seconds < min_duration_s:
        raise ClipError("too_short", f"{seconds:.3f} s of audio, less than min_duration_s={min_duration_s:g}")
    if seconds < min_segment_fraction * segment_s:
        raise ClipError("truncated", f"{seconds:.2f} s of a {segment_s:g} s segment, less than "
                                     f"min_segment_fraction={min_segment_fraction:g} of it")
    deviation = float(np.abs(audio - audio.mean()).max())
    if deviation < SILENCE_PEAK:
        what = "silent" if abs(float(audio.mean())) < SILENCE_PEAK else f"constant (DC {float(audio.mean()):.2g})"
        raise ClipError("silent", f"the segment is {what}: peak deviation {deviation:.1e} < {SILENCE_PEAK:.0e}")
    return seconds


def expected_seconds(source: Path, start_s: float, segment_s: float) -> float | None:
    """How much audio the header promises from `start_s` on, up to the segment's length (None: unknown)."""
    declared = probe_duration(source)
    return None if declared is None else max(min(declared - start_s, segment_s), 0.0)


def write_flac(path: Path, audio: np.ndarray, origin: str = "") -> None:
    """16 kHz mono 16-bit FLAC (clipped to [-1, 1], as ffmpeg's conversion did); the file of the
    source it came from is kept in its comment, so a resumed run reports it too."""
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC") as f:
        if origin:
            f.comment = f"source: {origin}"
        f.write(np.clip(audio, -1.0, 1.0))


def flac_origin(path: Path) -> str:
    """The source file recorded by write_flac ('' for files written before it recorded one)."""
    try:
        with sf.SoundFile(str(path)) as f:
            comment = f.comment or ""
    except (sf.LibsndfileError, RuntimeError):
        return ""
    return comment.removeprefix("source: ") if comment.startswith("source: ") else ""


def check_format(path: Path) -> float:
    """Cheap header check of a finished FLAC (no decoding): 16 kHz, mono, some frames. Returns the duration."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ClipError("corrupt", f"cannot read {path.name}: {exc}") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise ClipError("bad_format", f"{path.name} is {info.samplerate} Hz x {info.channels} channels, "
                                      f"expected {SAMPLE_RATE} Hz mono")
    if not 0 < info.frames < 2 ** 62:  # a FLAC with no samples declares its length unknown (2**63 - 1)
        raise ClipError("empty", "no audio in the segment (0 frames): the video may be shorter than its start")
    return info.frames / SAMPLE_RATE
