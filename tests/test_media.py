"""clipgen.media against real PyAV/FFmpeg and Pillow: small clips rendered into tmp_path, no mocks."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from clipgen.errors import MediaError
from clipgen.images import encode_image, fit_image, load_image
from clipgen.media import (
    VideoInfo,
    aspect_ratio_value,
    make_thumbnail,
    matches_aspect,
    probe,
    render_preview,
)

PROMPT = "A lighthouse keeper walks along a stormy cliff at dusk, waves crashing below"


def textured(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Busy, mid-grey-centred content: nowhere near black, and hard enough to compress that JPEG rate
    control would pick a coarse quantiser if left to itself."""
    noise = Image.effect_noise(size, 40 + seed)
    image = Image.merge("RGB", (noise, noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT), noise.rotate(180)))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(230, 180, 40))
    return image


def write_clip(path: Path, size: tuple[int, int], frames: int = 6, fps: int = 24) -> Path:
    """A plain H.264 MP4 (index at the end, as ffmpeg writes by default) made without clipgen."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_image(textured(size, seed=index))
            output.mux(stream.encode(frame.reformat(format="yuv420p")))
        output.mux(stream.encode(None))
    return path


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes


def first_and_last_frames(path: Path) -> tuple[Image.Image, Image.Image]:
    with av.open(str(path)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    return frames[0], frames[-1]


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def mjpeg_default_quality(image: Image.Image) -> bytes:
    """The same frame through PyAV's mjpeg encoder with its default rate control (no qmin/qmax)."""
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.time_base = image.width, image.height, Fraction(1, 1)
    encoder.pix_fmt, encoder.color_range = "yuv420p", 2
    frame = av.VideoFrame.from_image(image).reformat(format="yuv420p", dst_color_range=2)
    return b"".join(bytes(packet) for packet in [*encoder.encode(frame), *encoder.encode(None)])


# --- render_preview -----------------------------------------------------------------------------------


def test_render_preview_without_scene_is_faststart_h264(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "nested" / "preview.mp4"  # parent does not exist yet
    assert render_preview(dest, width=320, height=180, duration=1.5, prompt=PROMPT) == dest

    info = probe(dest)
    assert info.codec == "h264"
    assert (info.width, info.height) == (320, 180)
    assert info.fps == 24
    assert info.frames == 36
    assert abs(info.duration - 36 / 24) <= 1 / 24
    boxes = top_level_boxes(dest)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")
    # The sliding bar makes it a video, not a still.
    first, last = first_and_last_frames(dest)
    assert mean_difference(first, last) > 0.5
    assert sorted(p.name for p in dest.parent.iterdir()) == ["preview.mp4"]  # no temp file left behind


@pytest.mark.parametrize(("width", "height"), [(320, 180), (180, 320), (240, 240)])
def test_render_preview_with_scene_and_characters(tmp_path: Path, width: int, height: int) -> None:
    dest = tmp_path / "scene.mp4"
    characters = [Image.new("RGB", (300, 500), (200, 40, 40)), Image.new("RGB", (500, 300), (40, 40, 200))]
    render_preview(
        dest,
        width=width,
        height=height,
        duration=1,
        fps=24,
        prompt=PROMPT,
        scene_image=textured((640, 400)),
        character_images=characters,
        caption="PREVIEW · local renderer",
    )

    info = probe(dest)
    assert (info.width, info.height, info.frames) == (width, height, 24)
    assert abs(info.duration - 1) <= 1 / 24
    first, last = first_and_last_frames(dest)
    assert first.size == (width, height)
    assert mean_difference(first, last) > 2  # Ken Burns zoom/pan moved the picture


@pytest.mark.slow
def test_render_preview_full_hd(tmp_path: Path) -> None:
    dest = render_preview(
        tmp_path / "hd.mp4",
        width=1920,
        height=1080,
        duration=1,
        prompt=PROMPT,
        scene_image=textured((1200, 800)),
        character_images=[textured((200, 300), seed=3)],
    )
    assert probe(dest) == VideoInfo(duration=1.0, width=1920, height=1080, fps=24.0, codec="h264", frames=24)
    thumb = make_thumbnail(dest, tmp_path / "hd.jpg")
    with Image.open(thumb) as image:
        assert (image.format, image.size) == ("JPEG", (320, 180))


@pytest.mark.parametrize(("width", "height"), [(321, 180), (320, 181), (0, 180)])
def test_render_preview_rejects_odd_or_empty_size(tmp_path: Path, width: int, height: int) -> None:
    with pytest.raises(ValueError, match="even"):
        render_preview(tmp_path / "x.mp4", width=width, height=height, duration=1, prompt=PROMPT)
    assert list(tmp_path.iterdir()) == []


def test_render_preview_rejects_zero_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frame"):
        render_preview(tmp_path / "x.mp4", width=320, height=180, duration=0.01, prompt=PROMPT)


# --- make_thumbnail -----------------------------------------------------------------------------------


def thumbnail_of(tmp_path: Path, size: tuple[int, int]) -> Image.Image:
    clip = write_clip(tmp_path / f"clip_{size[0]}x{size[1]}.mp4", size)
    dest = make_thumbnail(clip, tmp_path / "thumbs" / f"{size[0]}x{size[1]}.jpg")
    image = Image.open(dest)
    assert image.format == "JPEG"
    assert image.size == (320, 180)
    return image


def content_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of the non-black pixels: where the picture is, padding excluded."""
    box = image.convert("L").point(lambda v: 255 if v > 40 else 0).getbbox()
    assert box is not None
    return box


def test_thumbnail_of_landscape_fills_the_frame(tmp_path: Path) -> None:
    with thumbnail_of(tmp_path, (640, 360)) as image:
        assert content_box(image) == (0, 0, 320, 180)


def test_thumbnail_of_portrait_is_pillarboxed_not_stretched(tmp_path: Path) -> None:
    with thumbnail_of(tmp_path, (360, 640)) as image:
        left, top, right, bottom = content_box(image)
        assert abs((right - left) - 180 * 9 / 16) <= 3  # ≈101 px wide: the 9:16 shape kept
        assert abs(left - (320 - (right - left)) / 2) <= 2  # centred
        assert (top, bottom) == (0, 180)
        for strip in (image.crop((0, 0, 100, 180)), image.crop((220, 0, 320, 180))):
            assert max(ImageStat.Stat(strip).mean) < 8  # black padding


def test_thumbnail_of_square_is_pillarboxed(tmp_path: Path) -> None:
    with thumbnail_of(tmp_path, (480, 480)) as image:
        left, _, right, _ = content_box(image)
        assert abs((right - left) - 180) <= 3


def test_thumbnail_is_encoded_at_q2(tmp_path: Path) -> None:
    with thumbnail_of(tmp_path, (640, 360)) as image:
        luma = image.quantization[0]
        pixels = image.convert("RGB")
    # FFmpeg's mjpeg bakes the quantiser into the tables it writes: MPEG-1 intra matrix * q / 8.
    # At q=2 the largest entry is 83*2/8 -> 20; any coarser quantiser gives larger ones.
    assert max(luma) <= 21
    assert sum(luma) / len(luma) < 9
    # And this content is one where the encoder left to itself would have chosen worse.
    with Image.open(io.BytesIO(mjpeg_default_quality(pixels))) as default:
        assert max(default.quantization[0]) > 21


def test_thumbnail_of_garbage_raises_media_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video\n" * 100)
    with pytest.raises(MediaError):
        make_thumbnail(garbage, tmp_path / "thumb.jpg")
    assert not (tmp_path / "thumb.jpg").exists()


def test_thumbnail_replaces_existing_file_atomically(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", (640, 360), frames=2)
    dest = tmp_path / "thumb.jpg"
    dest.write_bytes(b"old")
    make_thumbnail(clip, dest, size=(160, 90))
    with Image.open(dest) as image:
        assert image.size == (160, 90)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "thumb.jpg"]


# --- probe --------------------------------------------------------------------------------------------


def test_probe_reads_a_plain_clip(tmp_path: Path) -> None:
    info = probe(write_clip(tmp_path / "clip.mp4", (320, 180), frames=12))
    assert (info.width, info.height, info.codec, info.frames, info.fps) == (320, 180, "h264", 12, 24.0)
    assert abs(info.duration - 0.5) <= 1 / 24


def test_probe_rejects_text(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    with pytest.raises(MediaError) as caught:
        probe(text)
    assert caught.value.__cause__ is not None


def test_probe_rejects_truncated_clip_with_index_at_end(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "clip.mp4", (320, 180), frames=12).read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError):
        probe(half)


def test_probe_rejects_truncated_faststart_clip(tmp_path: Path) -> None:
    # The index is intact at the front, so FFmpeg opens this happily; probe must still notice.
    full = render_preview(tmp_path / "full.mp4", width=320, height=180, duration=1, prompt=PROMPT)
    data = full.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated"):
        probe(half)


def test_probe_rejects_still_image(tmp_path: Path) -> None:
    png = tmp_path / "still.png"
    textured((64, 64)).save(png)
    with pytest.raises(MediaError):
        probe(png)


# --- images -------------------------------------------------------------------------------------------


def test_load_image_decodes_png_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    Image.new("RGBA", (40, 30), (10, 20, 30, 128)).save(path)
    image = load_image(path)
    assert (image.mode, image.size) == ("RGB", (40, 30))


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path, exif=exif)
    assert load_image(path).size == (30, 40)


def test_load_image_rejects_text(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    path.write_text("hello")
    with pytest.raises(MediaError, match="not an image"):
        load_image(path)


def test_load_image_refuses_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # just over the limit: Pillow only warns
    with pytest.raises(MediaError):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # far over it: Pillow raises
    with pytest.raises(MediaError):
        load_image(path)


def marked_landscape() -> Image.Image:
    """1600x900 with a red stripe at the left edge and a blue one at the right."""
    image = Image.new("RGB", (1600, 900), (120, 120, 120))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 19, 899), fill=(255, 0, 0))
    draw.rectangle((1580, 0, 1599, 899), fill=(0, 0, 255))
    return image


def has_colour(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    return any(c == colour for _, c in image.getcolors(maxcolors=1 << 20) or [])


@pytest.mark.parametrize(
    ("ratio", "crop_size", "pad_size"),
    [("9:16", (506, 900), (1600, 2844)), ("1:1", (900, 900), (1600, 1600))],
)
def test_fit_image_crop_and_pad(ratio: str, crop_size: tuple[int, int], pad_size: tuple[int, int]) -> None:
    source = marked_landscape()

    cropped = fit_image(source, ratio, "crop")
    assert cropped.size == crop_size
    assert matches_aspect(*cropped.size, ratio, tolerance=0.005)
    assert not has_colour(cropped, (255, 0, 0)) and not has_colour(cropped, (0, 0, 255))  # edges cut

    padded = fit_image(source, ratio, "pad")
    assert padded.size == pad_size
    assert matches_aspect(*padded.size, ratio, tolerance=0.005)
    assert has_colour(padded, (255, 0, 0)) and has_colour(padded, (0, 0, 255))  # whole image kept
    assert padded.getpixel((padded.width // 2, 0)) == (0, 0, 0)  # black bars
    assert padded.getpixel((padded.width // 2, padded.height // 2)) == (120, 120, 120)


def test_fit_image_max_size_downscales_but_never_upscales() -> None:
    source = marked_landscape()
    small = fit_image(source, "9:16", "crop", max_size=(512, 512))
    assert small.size == (288, 512)
    assert all(side % 2 == 0 for side in small.size)
    assert fit_image(source, "16:9", "pad", max_size=(4000, 4000)).size == (1600, 900)
    odd = fit_image(Image.new("RGB", (333, 201)), "16:9", "crop", max_size=(301, 301))
    assert all(side % 2 == 0 for side in odd.size) and odd.width <= 301
    assert matches_aspect(*odd.size, "16:9", tolerance=0.02)


def test_encode_image() -> None:
    rgba = Image.new("RGBA", (32, 16), (255, 0, 0, 100))
    assert encode_image(rgba, "PNG").startswith(b"\x89PNG\r\n\x1a\n")
    jpeg = encode_image(rgba, "JPEG", quality=80)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.size) == ("JPEG", (32, 16))


# --- aspect ratios ------------------------------------------------------------------------------------


def test_aspect_ratio_value() -> None:
    assert aspect_ratio_value("16:9") == pytest.approx(16 / 9)
    assert aspect_ratio_value("9:16") == pytest.approx(9 / 16)
    assert aspect_ratio_value("1:1") == 1
    assert aspect_ratio_value(" 2.39:1 ") == pytest.approx(2.39)


@pytest.mark.parametrize(
    "bad", ["", "16", "16x9", "16:", ":9", "0:1", "1:0", "-16:9", "a:b", "1:2:3", "nan:1", "inf:1"]
)
def test_aspect_ratio_value_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        aspect_ratio_value(bad)


def test_matches_aspect() -> None:
    assert matches_aspect(1920, 1080, "16:9")
    assert matches_aspect(1280, 720, "16:9")
    assert matches_aspect(1000, 560, "16:9")  # 0.45 % off
    assert not matches_aspect(1000, 600, "16:9")
    assert not matches_aspect(1080, 1920, "16:9")
    assert matches_aspect(1080, 1920, "9:16")
    assert matches_aspect(1000, 600, "16:9", tolerance=0.1)
    assert not matches_aspect(0, 1080, "16:9")
    with pytest.raises(ValueError):
        matches_aspect(1920, 1080, "wide")
