"""Video on PyAV's bundled FFmpeg (no system ffmpeg is needed): probe, thumbnail and the local H.264 preview
renderer. This module owns video; reference images are read by clipgen.images."""

from __future__ import annotations

import colorsys
import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import repeat
from pathlib import Path
from typing import cast

import av
from av.container import InputContainer
from av.error import FFmpegError
from av.filter import Graph
from av.video.reformatter import ColorRange
from PIL import Image, ImageDraw, ImageFont, ImageOps

from clipgen.errors import MediaError
from clipgen.files import atomic_write

KEN_BURNS_ZOOM = 1.12  # final zoom of the scene image over the whole clip
KEN_BURNS_PAN = 0.6  # share of the free margin the crop centre drifts across, left to right
CHARACTER_HEIGHT = 0.18  # character thumbnails, as a share of the frame's short side
AVCOL_SPC_SMPTE170M = 6  # AVColorSpace; PyAV's Colorspace enum holds swscale's different numbering


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    width: int
    height: int
    fps: float
    codec: str
    frames: int | None


def probe(path: Path) -> VideoInfo:
    try:
        with _open_video(path) as container:
            fmt = container.format.name
            if not container.streams.video or fmt == "image2" or fmt.endswith("_pipe"):
                raise MediaError(f"{path} is not a video (container format {fmt!r})")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            frames = stream.frames or None
            if container.duration:
                duration = container.duration / av.time_base
            elif stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            else:
                count = frames or sum(1 for packet in container.demux(stream) if packet.size)
                duration = count / fps if fps else 0.0
            # A download cut short keeps a front-loaded (faststart) index, so FFmpeg opens it without
            # complaint; samples the index places past the end of the file are the giveaway.
            size = path.stat().st_size
            for entries in (s.index_entries for s in container.streams):
                if len(entries) and entries[-1].pos + entries[-1].size > size:
                    raise MediaError(f"{path} is truncated: its index points past the end of the file")
            info = VideoInfo(duration, stream.width, stream.height, fps, stream.codec_context.name, frames)
    except (FFmpegError, OSError) as exc:
        raise MediaError(f"{path} is not a readable video: {exc}") from exc
    if info.duration <= 0 or info.width <= 0 or info.height <= 0:
        raise MediaError(
            f"{path} has no playable video (duration {info.duration}, {info.width}x{info.height})"
        )
    return info


def _open_video(path: Path) -> InputContainer:
    """Open for reading the streams' parameters without decoding pictures to find them.

    FFmpeg's stream analysis (avformat_find_stream_info) decodes frames until it is sure of an H.264
    stream's reordering delay: up to seven, 20-25 ms of CPU on a 1080p clip (3-5 ms without), before a
    probe reads a field. The duration, size and frame rate come from the container's index and the codec's
    parameter sets, not from decoded pictures, so the analysis is told to skip decoding (`skip_frame` only
    reaches that analysis's decoders: a stream's own decoder is a fresh one). A format that only tells its
    size by decoding is opened again the full way.
    """
    container = av.open(str(path), options={"skip_frame": "all"})
    if all(stream.width > 0 and stream.height > 0 for stream in container.streams.video):
        return container
    container.close()
    return av.open(str(path))


def aspect_ratio_value(aspect_ratio: str) -> float:
    parts = aspect_ratio.split(":")
    try:
        width, height = (float(part) for part in parts)
    except ValueError as exc:
        raise ValueError(f"aspect ratio must look like '16:9', got {aspect_ratio!r}") from exc
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"aspect ratio must be two positive numbers, got {aspect_ratio!r}")
    return width / height


def matches_aspect(width: int, height: int, aspect_ratio: str, tolerance: float = 0.02) -> bool:
    target = aspect_ratio_value(aspect_ratio)
    return width > 0 and height > 0 and abs(width / height - target) / target <= tolerance


def make_thumbnail(video: Path, dest: Path, size: tuple[int, int] = (320, 180)) -> Path:
    width, height = size
    try:
        with _open_video(video) as container:
            if not container.streams.video:
                raise MediaError(f"{video} has no video stream")
            stream = container.streams.video[0]
            # The first frame of a clip is a key frame: told to skip the others, the decoder hands it over
            # without decoding (or, with frame threads, queueing) the frames behind it.
            stream.codec_context.skip_frame = "NONKEY"
            frame = next(container.decode(stream), None)
            sar = stream.sample_aspect_ratio
    except (FFmpegError, OSError) as exc:
        raise MediaError(f"{video} is not a readable video: {exc}") from exc
    if frame is None:
        raise MediaError(f"{video} has no decodable video frame")
    # Fit the display shape (non-square pixels included) inside `size`, then pad: never stretch.
    shown_width = frame.width * float(sar) if sar else float(frame.width)
    scale = min(width / shown_width, height / frame.height)
    fit = (max(1, min(width, round(shown_width * scale))), max(1, min(height, round(frame.height * scale))))
    canvas = Image.new("RGB", size)
    picture = _to_image(frame.reformat(width=fit[0], height=fit[1], interpolation="AREA"))
    canvas.paste(picture, ((width - fit[0]) // 2, (height - fit[1]) // 2))

    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.time_base = width, height, Fraction(1, 1)
    # Full-range yuv420p is what the deprecated yuvj420p meant; FFmpeg 8's mjpeg takes it when tagged so.
    encoder.pix_fmt, encoder.color_range = "yuv420p", ColorRange.JPEG
    # ffmpeg `-q:v 2`. The CLI gets there by copying global_quality into every frame; here pinning the
    # rate control's quantiser range does it, independent of bit_rate and of the frame.
    encoder.qmin = encoder.qmax = 2
    yuv = _from_image(canvas).reformat(format="yuv420p", dst_color_range=ColorRange.JPEG)
    data = b"".join(bytes(packet) for packet in [*encoder.encode(yuv), *encoder.encode(None)])
    with atomic_write(dest, ".part.jpg") as tmp:
        tmp.write_bytes(data)
    return dest


def character_card_size(frame: tuple[int, int]) -> tuple[int, int]:
    """The size a character is drawn at in a preview of `frame`'s size (without its border)."""
    card_h = max(8, round(min(frame) * CHARACTER_HEIGHT))  # the short side: portrait frames look the same
    return max(6, card_h * 3 // 4), card_h


def render_preview(
    dest: Path,
    *,
    width: int,
    height: int,
    duration: float,
    fps: int = 24,
    prompt: str,
    scene_image: Image.Image | None = None,
    character_images: Sequence[Image.Image] = (),
    caption: str = "PREVIEW",
) -> Path:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"preview size must be positive and even for yuv420p, got {width}x{height}")
    count = round(duration * fps)
    if fps <= 0 or count < 1:
        raise ValueError(f"preview needs at least one frame, got duration={duration} fps={fps}")
    size = (width, height)
    layer = _overlay_layer(size, character_images, caption)
    frames: Iterable[av.VideoFrame]
    if scene_image is not None:
        frames = _ken_burns(scene_image, size, count)
        box = layer.getbbox() or (0, 0, 2, 2)
        sprite, x, y = layer.crop(box), str(box[0]), str(box[1])
    else:
        # Everything is static except a short bar sliding along the bottom edge, so draw the frame once and
        # let the overlay filter move the bar; per-frame work is then just the blend and the encode.
        still = _prompt_frame(prompt, size)
        still.paste(layer, mask=layer)
        frames = repeat(_from_image(still).reformat(format="yuv420p"), count)
        bar_height = max(2, height // 100)
        sprite = Image.new("RGBA", (max(4, width // 6), bar_height), (255, 255, 255, 210))
        travel = max(count - 1, 1) / fps
        x, y = f"(main_w-overlay_w)*min(t/{travel:.6f},1)", str(height - bar_height)
    with atomic_write(dest, ".part.mp4") as tmp:
        _encode(tmp, frames, size, fps, sprite, x, y)
    return dest


def _encode(
    path: Path,
    frames: Iterable[av.VideoFrame],
    size: tuple[int, int],
    fps: int,
    sprite: Image.Image,
    x: str,
    y: str,
) -> None:
    """H.264-encode `frames` with `sprite` (RGBA) blended on at (x, y), which may be overlay-filter
    expressions of t. FFmpeg's overlay filter blends in yuv420p, only over the sprite's area."""
    time_base = Fraction(1, fps)
    graph = Graph()
    main = graph.add_buffer(
        width=size[0], height=size[1], format=av.VideoFormat("yuv420p"), time_base=time_base
    )
    over = graph.add_buffer(
        width=sprite.width, height=sprite.height, format=av.VideoFormat("rgba"), time_base=time_base
    )
    blend = graph.add("overlay", x=x, y=y, eof_action="repeat", format="yuv420")
    sink = graph.add("buffersink")
    main.link_to(blend, 0, 0)
    over.link_to(blend, 0, 1)
    blend.link_to(sink)
    graph.configure()
    still = av.VideoFrame.from_bytes(sprite.tobytes(), sprite.width, sprite.height, format="rgba")
    still.pts, still.time_base = 0, time_base
    over.push(still)
    over.push(None)  # one sprite frame for the whole clip; eof_action=repeat keeps it on every frame

    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as output:
        stream = output.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "26"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        # PyAV opens codecs with slice threads; frame threads let x264 encode while we build the next frame.
        stream.thread_type = "FRAME"
        # swscale converts RGB with the BT.601 matrix; say so, or players assume BT.709 for HD sizes.
        stream.colorspace = AVCOL_SPC_SMPTE170M
        for index, frame in enumerate(frames):
            frame.pts, frame.time_base = index, time_base
            main.push(frame)
            output.mux(stream.encode(cast(av.VideoFrame, sink.pull())))
        output.mux(stream.encode(None))


def _ken_burns(image: Image.Image, size: tuple[int, int], count: int) -> Iterator[av.VideoFrame]:
    """Slow zoom with a slight pan over the cover-fitted image. Per frame, an integer crop goes to swscale,
    which scales and converts to yuv420p in one pass: ~3 ms at 1080p, where Pillow's resize alone is ~25 ms.
    Integer crops can wobble by half a pixel; invisible at preview quality."""
    width, height = size
    fitted = image.size == size and image.mode == "RGB"  # as the local provider keeps it: no copies needed
    source = image if fitted else ImageOps.fit(image.convert("RGB"), size)
    for index in range(count):
        progress = index / max(count - 1, 1)
        zoom = 1 + (KEN_BURNS_ZOOM - 1) * progress
        crop_w, crop_h = source.width / zoom, source.height / zoom
        left = (source.width - crop_w) * (0.5 + KEN_BURNS_PAN * (progress - 0.5))
        top = (source.height - crop_h) / 2
        crop = source.crop((round(left), round(top), round(left + crop_w), round(top + crop_h)))
        yield _from_image(crop).reformat(width=width, height=height, format="yuv420p")


def _prompt_frame(prompt: str, size: tuple[int, int]) -> Image.Image:
    """A gradient in two dark colours picked by the prompt's hash, with the prompt wrapped in the middle."""
    width, height = size
    digest = hashlib.sha256(prompt.encode()).digest()
    hue = digest[0] / 255
    top, bottom = (
        tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h % 1, 0.65, 0.45))
        for h in (hue, hue + 0.15 + digest[1] / 255 * 0.3)
    )
    mask = Image.linear_gradient("L").resize(size)
    frame = Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), mask)
    font_size = max(10, min(size) // 16)
    font = ImageFont.load_default(size=font_size)
    lines: list[str] = []
    for word in prompt.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width * 0.84:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    max_lines = max(1, int(height * 0.6 / (font_size * 1.25)))
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + " …"]
    ImageDraw.Draw(frame).multiline_text(
        (width / 2, height / 2),
        "\n".join(lines),
        font=font,
        fill="white",
        anchor="mm",
        align="center",
        spacing=font_size // 4,
        stroke_width=max(1, font_size // 18),
        stroke_fill="black",
    )
    return frame


def _overlay_layer(size: tuple[int, int], characters: Sequence[Image.Image], caption: str) -> Image.Image:
    """Transparent frame-sized layer: caption top-left, character thumbnails in a row bottom-left."""
    width, height = size
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    short_side = min(size)  # so portrait frames get the same proportions as landscape ones
    margin = max(4, round(short_side * 0.03))
    if caption:
        draw = ImageDraw.Draw(layer)
        font_size = max(10, round(short_side * 0.03))
        font = ImageFont.load_default(size=font_size)
        left, top, right, bottom = draw.textbbox((margin, margin), caption, font=font)
        pad = max(2, font_size // 3)
        draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0, 140))
        draw.text((margin, margin), caption, font=font, fill=(255, 255, 255, 235))
    card_size = character_card_size(size)
    border = max(1, round(short_side * 0.004))
    left = margin
    for character in characters:
        card = ImageOps.fit(character.convert("RGB"), card_size)
        card = ImageOps.expand(card, border, fill="white")
        if left + card.width > width - margin:
            break  # no room for more; a partly shown card reads as a glitch
        layer.paste(card, (left, height - margin - card.height))
        left += card.width + margin // 2
    return layer


# PyAV's stubs leave these two untyped.
def _from_image(image: Image.Image) -> av.VideoFrame:
    frame: av.VideoFrame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
    return frame


def _to_image(frame: av.VideoFrame) -> Image.Image:
    image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]
    return image
