"""memscore sample: write a small archive of real photos to try memscore on.

The photos are the ones scikit-image ships (astronaut, coffee, chelsea, rocket,
...), saved in several formats and sizes, in nested folders, with a name that has
spaces and non-ASCII letters, plus one file that is not an image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="FOLDER", help="where to write the sample archive")


def write_sample(folder: Path) -> list[Path]:
    """Write the sample archive; return the image files written."""
    try:
        import skimage.data
    except ImportError as error:
        from memscore.flows.cli import UserError

        raise UserError("the sample needs scikit-image: pip install 'memscore[sample]'") from error
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    formats = [("photos", ".jpg", "JPEG"), ("photos/png", ".png", "PNG"), ("more", ".webp", "WEBP")]
    for i, name in enumerate(PHOTOS):
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image version
            continue
        image = Image.fromarray(array).convert("RGB")
        sub, ext, fmt = formats[i % len(formats)]
        target = folder / sub / f"{name}{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, fmt)
        written.append(target)
    special = folder / "more" / "Café au lait (copy).JPG"
    Image.fromarray(skimage.data.coffee()).resize((300, 200)).save(special, "JPEG")
    written.append(special)
    (folder / "README.txt").write_text("Sample photos from scikit-image (see its licence notes).\n")
    return written


def run(args: argparse.Namespace) -> int:
    written = write_sample(Path(args.folder))
    print(f"wrote {len(written)} images to {args.folder}")
    return 0
