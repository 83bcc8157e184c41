"""H.264 clips made on the fly with the libx264 FFmpeg that `imageio-ffmpeg` ships (nothing is downloaded).

FFmpeg's `testsrc2` pattern (moving shapes, a running clock, colour bars), encoded the way IP cameras do it:
a keyframe every `gop_s` seconds, B-frames as x264 chooses them. Used by tests/test_decode.py and
bench/label.py. This module does not test anything.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path


def ffmpeg_exe() -> str:
    """The path of imageio-ffmpeg's FFmpeg binary (built with libx264)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def make_h264(
    path: str | Path,
    seconds: float,
    *,
    size: tuple[int, int] = (320, 240),
    fps: str = "25",
    gop_s: float = 1.0,
    bitrate: str | None = None,
    preset: str = "veryfast",
) -> Path:
    """Encode `seconds` of `testsrc2` at `size` (width, height) and `fps` into an H.264 MP4 at `path`.

    Args:
        fps: a rate FFmpeg understands, e.g. "25" or "30000/1001".
        gop_s: seconds between keyframes (fixed: no scene-cut keyframes).
        bitrate: e.g. "4M" (constant-quality encoding when None).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gop = max(1, round(gop_s * Fraction(fps)))
    rate = ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate] if bitrate else ["-crf", "26"]
    command = [
        ffmpeg_exe(),
        *("-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"),
        *("-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}"),
        *("-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", *rate),
        *("-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", str(path)),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return path


def mixed_videos(root: Path) -> Path:
    """Under `root`: two H.264 clips as cameras write them (6 s with a keyframe every 2 s; 4 s at 29.97 fps with
    one every second), an MPEG-4 one in a subfolder (cam/c.mp4, 5 s), and a corrupt file (corrupt.mp4)."""
    from conftest import moving_frames

    from distill.video import write_video

    make_h264(root / "a.mp4", 6, gop_s=2.0)
    make_h264(root / "b.mp4", 4, fps="30000/1001", gop_s=1.0)
    write_video(root / "cam" / "c.mp4", moving_frames(5.0), 25)
    (root / "corrupt.mp4").write_bytes((root / "a.mp4").read_bytes()[:3000])
    return root
