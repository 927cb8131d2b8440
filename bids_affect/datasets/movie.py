"""Synthetic movies with known visual properties, written with PyAV (no system ffmpeg).

:func:`write_synthetic_movie` writes a short video of scenes whose colour,
luminance and texture change from one scene to the next (drawn by a seeded
generator), and returns the ground truth of every frame: its time, scene and the
visual properties measured on the frame as rendered (before the lossy encoder).
Tests and the demo plant voxels driven by these properties and check that the
encoding models recover them.

Each scene has a background colour (r, g, b drawn in [0.1, 0.9]) modulated by a
drifting sinusoidal grating (contrast in [0, 0.6], 1-8 cycles per image, a random
orientation and drift speed), so frames differ within a scene too, and a small
amount of seeded pixel noise. Scene lengths are drawn in ``scene_duration``.

Ground truth columns
    ``frame`` (index), ``time`` (s, presentation time of the frame), ``scene``,
    ``r``, ``g``, ``b`` (mean channel values in [0, 1]), ``luminance`` (Rec. 709 luma
    of the mean colour, in [0, 1]), ``rms_contrast`` (standard deviation of the luma
    image over its mean), ``spatial_frequency`` (cycles per image), ``orientation``
    (radians) and ``drift`` (cycles per second) of the scene's grating.
    ``frame.attrs`` holds ``fps``, ``size`` and ``codec``.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> truth = write_synthetic_movie(Path(tempfile.mkdtemp()) / "movie.mp4", duration=2.0,
...                               fps=10, seed=0)
>>> len(truth), float(truth["time"].iloc[-1]), truth.attrs["codec"]
(20, 1.9, 'mpeg4')
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from bids_affect.exceptions import UsageError

#: Rec. 709 luma weights of R, G and B.
LUMA_WEIGHTS = np.array([0.2126, 0.7152, 0.0722])

#: Codecs this writer offers (all built into PyAV's FFmpeg).
CODECS = ("libx264", "mpeg4")

#: Containers by file extension.
CONTAINERS = (".mp4", ".mkv")


def _check_settings(path: Path, duration: float, fps: float, size: tuple[int, int],
                    scene_duration: tuple[float, float], codec: str) -> None:
    if path.suffix not in CONTAINERS:
        raise UsageError(f"must end with one of {', '.join(CONTAINERS)}, got {path.name!r}",
                         path="path")
    if codec not in CODECS:
        raise UsageError(f"must be one of {', '.join(CODECS)}, got {codec!r}", path="codec")
    if not (np.isfinite(fps) and fps > 0):
        raise UsageError(f"must be a positive frame rate, got {fps!r}", path="fps")
    if not (np.isfinite(duration) and duration * fps >= 1):
        raise UsageError(f"must last at least one frame (1/fps s), got {duration!r}",
                         path="duration")
    if len(size) != 2 or min(size) < 16 or any(int(s) % 2 for s in size):
        raise UsageError(f"must be (height, width), even and at least 16 pixels, got {size!r}",
                         path="size")
    low, high = scene_duration
    if not 0 < low <= high:
        raise UsageError(f"must be (shortest, longest) scene length in s with "
                         f"0 < shortest <= longest, got {scene_duration!r}",
                         path="scene_duration")


def _draw_scenes(n_frames: int, fps: float, scene_duration: tuple[float, float],
                 rng: np.random.Generator) -> pd.DataFrame:
    """Scene parameters and the first frame of each scene."""
    starts, frame = [], 0
    while frame < n_frames:
        starts.append(frame)
        frame += max(1, int(round(rng.uniform(*scene_duration) * fps)))
    n_scenes = len(starts)
    return pd.DataFrame({
        "start": starts,
        "r": rng.uniform(0.1, 0.9, n_scenes), "g": rng.uniform(0.1, 0.9, n_scenes),
        "b": rng.uniform(0.1, 0.9, n_scenes),
        "contrast": rng.uniform(0.0, 0.6, n_scenes),
        "spatial_frequency": rng.uniform(1.0, 8.0, n_scenes),
        "orientation": rng.uniform(0.0, np.pi, n_scenes),
        "drift": rng.uniform(-1.0, 1.0, n_scenes),
        "phase": rng.uniform(0.0, 2 * np.pi, n_scenes),
    })


def render_frame(scene: pd.Series, time_in_scene: float, size: tuple[int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """One RGB frame (uint8, ``(height, width, 3)``) of a scene at a time within it.

    Examples
    --------
    >>> scene = pd.Series({"r": .5, "g": .5, "b": .5, "contrast": 0., "spatial_frequency": 2.,
    ...                    "orientation": 0., "drift": 0., "phase": 0.})
    >>> render_frame(scene, 0.0, (16, 16), np.random.default_rng(0)).shape
    (16, 16, 3)
    """
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    position = (cols / width * np.cos(scene["orientation"])
                + rows / height * np.sin(scene["orientation"]))
    phase = scene["phase"] + 2 * np.pi * scene["drift"] * time_in_scene
    grating = np.sin(2 * np.pi * scene["spatial_frequency"] * position + phase)
    colour = np.array([scene["r"], scene["g"], scene["b"]])
    image = colour * (1.0 + scene["contrast"] * grating)[..., None]
    image += rng.normal(0.0, 0.01, image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def frame_properties(image: np.ndarray) -> dict[str, float]:
    """Mean r, g, b, luminance and RMS contrast of an 8-bit RGB frame.

    Examples
    --------
    >>> round(frame_properties(np.full((4, 4, 3), 255, dtype=np.uint8))["luminance"], 6)
    1.0
    """
    pixels = image.astype(np.float64) / 255.0
    luma = pixels @ LUMA_WEIGHTS
    mean_luma = float(luma.mean())
    r, g, b = (float(v) for v in pixels.mean(axis=(0, 1)))
    return {"r": r, "g": g, "b": b, "luminance": mean_luma,
            "rms_contrast": float(luma.std() / mean_luma) if mean_luma > 0 else 0.0}


def write_synthetic_movie(path: str | os.PathLike, *, duration: float = 12.0, fps: float = 10,
                          size: tuple[int, int] = (64, 64),
                          scene_duration: tuple[float, float] = (1.0, 4.0),
                          codec: str = "mpeg4",
                          seed: int | np.random.Generator | None = None) -> pd.DataFrame:
    """Write a synthetic movie of scenes and return each frame's ground truth.

    Frames are rendered and encoded one at a time (the movie is never held in
    memory). The file is written under a temporary name and renamed when complete.

    Parameters
    ----------
    path : path
        ``.mp4`` or ``.mkv`` file to write; its folder is created.
    duration : float
        Seconds; the movie has ``round(duration * fps)`` frames.
    fps : float
        Frame rate (a constant rate; 10-25 is plenty for tests).
    size : (int, int)
        ``(height, width)`` in pixels, even numbers (the encoders use 4:2:0 chroma).
    scene_duration : (float, float)
        Range of scene lengths in seconds.
    codec : {"mpeg4", "libx264"}
        MPEG-4 part 2 (quantiser 2), the default because the same seed gives the
        same bytes; or H.264 (quality crf 17), whose x264 encoder gave different
        bytes from run to run when the process was pinned to one core, so a
        dataset made with it is not reproducible byte for byte.
    seed : int, numpy Generator or None
        Draws the scenes and the pixel noise.

    Returns
    -------
    pandas.DataFrame
        One row per frame (see the module docstring for the columns).

    Examples
    --------
    >>> import tempfile
    >>> truth = write_synthetic_movie(Path(tempfile.mkdtemp()) / "m.mkv", duration=1.0,
    ...                               fps=8, codec="mpeg4", seed=1)
    >>> truth.columns[:4].tolist()
    ['frame', 'time', 'scene', 'r']
    """
    import av

    path = Path(path)
    size = (int(size[0]), int(size[1]))
    _check_settings(path, duration, fps, size, scene_duration, codec)
    rng = np.random.default_rng(seed)
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = int(round(duration * fps))
    scenes = _draw_scenes(n_frames, float(rate), scene_duration, rng)
    scene_of_frame = np.searchsorted(scenes["start"].to_numpy(), np.arange(n_frames),
                                     side="right") - 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    rows = []
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = size[1], size[0]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "17"} if codec == "libx264" else {"qscale": "2"}
            # One encoder thread and our own conversion to 4:2:0: the same seed must
            # give the same movie (and so the same features) on any number of cores.
            stream.codec_context.thread_count = 1
            for index in range(n_frames):
                scene = scenes.iloc[scene_of_frame[index]]
                time = index / float(rate)
                image = render_frame(scene, time - scene["start"] / float(rate), size, rng)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                    format="yuv420p")
                for packet in stream.encode(frame):
                    container.mux(packet)
                rows.append({"frame": index, "time": time, "scene": int(scene_of_frame[index]),
                             **frame_properties(image),
                             "spatial_frequency": scene["spatial_frequency"],
                             "orientation": scene["orientation"], "drift": scene["drift"]})
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    truth = pd.DataFrame(rows)
    truth.attrs.update({"fps": float(rate), "size": size, "codec": codec})
    return truth
