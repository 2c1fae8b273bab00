"""Reading a job file on the user's machine, and the images it names.

Image files the job names (paths relative to the file, absolute paths, file: URLs: in the job file's folder
and below unless the command is given --allow-any-file) and data: URIs longer than
MAX_INLINE_DATA_URI_CHARS are read here, checked as images, put in the reference cache and replaced by
`store://clip-references/sha256/<hex>.<ext>` references. The job then carries a few dozen characters per
image instead of its bytes: Prefect refuses flow-run parameters over 512 KB, and a phone photo is 2-5 MB.
The images themselves go to the store with `JobFile.upload`, which the command calls only once the job is
checked and planned, so a refused job uploads nothing. The flow and its workers never read files named by a
job (unless VIDEO_GENERATOR_ALLOW_FILE_REFERENCES); they read the store.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pydantic
from PIL import Image

from clipgen.errors import Problem, ValidationError
from clipgen.job import ClipPrompts
from clipgen.planning import pydantic_problems
from clipgen.reference_objects import ReferenceObject, StagedImage, object_for, upload_staged
from clipgen.references import MAX_IMAGE_BYTES, cache_image, decode_data_uri
from clipgen.stores.base import ClipStore

MAX_INLINE_DATA_URI_CHARS = 8 * 1024
"""A data: URI up to this long stays in the job as it is; a longer one is uploaded like a file."""


@dataclass(frozen=True)
class JobFile:
    """A job as read from its file: `job` names its images by store:// reference; `images` are their bytes,
    each once, to upload before the job is sent."""

    job: ClipPrompts
    images: tuple[StagedImage, ...]

    def upload(self, store: ClipStore) -> list[ReferenceObject]:
        """Put the images the store does not hold yet into its references bucket; the ones sent."""
        return upload_staged(store, self.images)


def read_job(path: Path, cache_dir: Path, allow_any_file: bool = False) -> JobFile:
    """The job in `path`, its images staged (see the module's doc), or ValidationError naming each field.

    Only files in the job file's folder and below are read unless `allow_any_file`: running someone else's
    job file must not send a private image from elsewhere on the disk (`../`, an absolute path, `~`, a
    symlink out of the folder) to a paid provider."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ValidationError.one("JOB.json", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValidationError.one(
            "JOB.json", f"not UTF-8 text (byte {exc.start}): save it as UTF-8 JSON"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValidationError.one(
            "JOB.json", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    images: tuple[StagedImage, ...] = ()
    if isinstance(raw, dict) and isinstance(raw.get("clip_prompts"), list):
        folder = JobFolder(path.resolve().parent, allow_any_file)
        images = _stage_images(raw["clip_prompts"], folder, cache_dir)
    try:
        job = ClipPrompts.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc)) from exc
    return JobFile(job, images)


def load_job(path: Path, store: ClipStore, cache_dir: Path, allow_any_file: bool = False) -> ClipPrompts:
    """The job in `path` with its images in `store`: ready to send to a deployment or queue, for scripts."""
    job_file = read_job(path, cache_dir, allow_any_file)
    job_file.upload(store)
    return job_file.job


@dataclass(frozen=True)
class JobFolder:
    """Where a job file's relative paths start, and whether files outside it may be read."""

    base: Path
    allow_any_file: bool

    def file(self, ref: str, named: Path, field: str) -> Path:
        """The file `named` (as `ref` wrote it) stands for; ValidationError naming `field` if it is outside
        the folder and that is not allowed."""
        found = self.base / named  # an absolute `named` replaces `base`
        # Resolved, so `..`, an absolute path or `~` elsewhere, and a symlink leading out are all caught.
        if not self.allow_any_file and not found.resolve().is_relative_to(self.base):
            raise ValidationError.one(
                field,
                f"{ref[:80]!r} is outside the job file's folder ({self.base}): only files in that folder "
                "and below are read, so that a job file from someone else cannot send your other images to "
                "a provider. Move the image beside the job file, or pass --allow-any-file to read it",
            )
        return found


def _stage_images(prompts: list[Any], folder: JobFolder, cache_dir: Path) -> tuple[StagedImage, ...]:
    """Replace each file and large data: URI in `prompts` by its store:// reference; the images, each once.
    Every field that cannot be read as an image is reported, not just the first."""
    problems: list[Problem] = []
    staged: dict[str, StagedImage] = {}

    def stage(ref: Any, field: str) -> Any:
        if not isinstance(ref, str) or not ref.strip() or not _plain_text(ref):
            return ref  # the job model refuses what is not text (NUL, lone surrogates), naming the field
        try:
            image = _staged_image(ref, field, folder, cache_dir)
        except ValidationError as exc:
            problems.extend(exc.problems)
            return ref
        if image is None:
            return ref
        staged.setdefault(image.object.path, image)
        return image.object.reference

    for position, prompt in enumerate(prompts):
        if not isinstance(prompt, dict):
            continue
        where = f"clip_prompts[{position}]"
        prompt["scene_reference_url"] = stage(
            prompt.get("scene_reference_url"), f"{where}.scene_reference_url"
        )
        for key in ("character_reference_urls", "object_reference_urls"):
            if isinstance(prompt.get(key), list):
                prompt[key] = [stage(ref, f"{where}.{key}[{i}]") for i, ref in enumerate(prompt[key])]
    if problems:
        raise ValidationError(problems)
    return tuple(staged.values())


def _staged_image(ref: str, field: str, folder: JobFolder, cache_dir: Path) -> StagedImage | None:
    """The image `ref` names if it is to be uploaded (a file, or a long data: URI); None to leave it as is."""
    try:
        parts = urlsplit(ref)
    except ValueError:  # not a URL (a malformed netloc): the job model refuses it, naming the field
        return None
    scheme = parts.scheme.lower()
    if scheme == "data":
        if len(ref) <= MAX_INLINE_DATA_URI_CHARS:
            return None
        return _staged(decode_data_uri(ref, field), field, cache_dir, "the data URI")
    if scheme and scheme != "file":
        return None  # http(s) and store:// are resolved by planning; anything else is refused there
    try:
        file = Path(unquote(parts.path)) if scheme else Path(ref).expanduser()
    except RuntimeError as exc:  # ~user of an unknown user
        raise ValidationError.one(field, f"cannot read {ref}: {exc}") from exc
    found = folder.file(ref, file, field)
    return _staged(_read_file(found, field), field, cache_dir, str(found))


def _read_file(file: Path, field: str) -> bytes:
    try:
        if not file.is_file():
            problem = f"file not found: {file}" if not file.exists() else f"not a file: {file}"
            raise ValidationError.one(field, problem)
        if file.stat().st_size > MAX_IMAGE_BYTES:  # before reading it
            raise ValidationError.one(field, f"{file} is larger than {MAX_IMAGE_BYTES // 2**20} MB")
        return file.read_bytes()
    except OSError as exc:
        raise ValidationError.one(field, f"cannot read {file}: {exc.strerror or exc}") from exc


def _staged(data: bytes, field: str, cache_dir: Path, shown: str) -> StagedImage:
    """`data` checked as an image and cached (so planning here, and a run on this machine, find it without
    asking the store), with the name and type it is uploaded under."""
    cache_image(data, field, cache_dir, shown)  # decodes it whole, with the decompression-bomb check
    with Image.open(io.BytesIO(data)) as image:
        image_format = (image.format or "").upper()
    # MPO (what PIL calls many phones' photos) is a JPEG with extra frames: served and named as one.
    content_type = "image/jpeg" if image_format == "MPO" else Image.MIME.get(image_format, "")
    content_type = content_type or f"image/{image_format.lower()}"
    return StagedImage(object_for(data, image_format), data, content_type)


def _plain_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
