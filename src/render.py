"""Stage render: digits drawn from fonts, which no MNIST writer made, in two parts by font family.

Writes OUT_DIR/selection.pt and OUT_DIR/heldout.pt, each {images: uint8 [N, 28, 28], labels: int64 [N], family:
int64 [N], families: [str]} with render.per_class images of each digit, its families in turn (see
digits.fonts.load), and OUT_DIR/fonts.json: the font sources used (matplotlib's version, each Debian package's
version, every font file's path and MD5), the font files and families left out and why, each part's families, its
counts per digit and per family and the MD5 of its images' and labels' bytes. Only the selection part may guide any
choice (a model, a recipe, an augmentation); the held-out part is for evaluation.

The typeset families come with matplotlib, the handwriting ones from Debian packages (scripts/font-packages.txt,
installed by `bash scripts/dev.sh setup` where apt-get and root or sudo are at hand). A family whose package is
absent is left out, saying so on stderr: the parts then hold other images and their MD5s differ from those of a
machine with every package, as expected. Otherwise the same font files (their MD5s are recorded), seed and Pillow
version (its bundled FreeType draws the glyphs) give the same bytes.
"""

import sys
import time
from pathlib import Path

import numpy as np

from digits import files, fonts, params, stage


def main() -> None:
    ap = stage.parser(__doc__)
    ap.add_argument("out_dir", help="where the parts and fonts.json go (data/fonts)")
    args = ap.parse_args()
    p = params.load(args.params).render
    out = Path(args.out_dir)
    named = {part: getattr(p, part) for part in fonts.PARTS}
    fonts.check_names(named)

    found = fonts.find([name for names in named.values() for name in names])
    for name, why in found.missing.items():
        print(f"left out: font family {name!r}: {why}", file=sys.stderr)
    parts = {part: [name for name in names if name in found.fonts] for part, names in named.items()}
    if empty := [part for part, names in parts.items() if not names]:
        raise fonts.FontError(f"no font family of render.{' or render.'.join(empty)} is available (see above)")
    used = fonts.sources([font for family in found.fonts.values() for font in family])
    print("fonts from " + ", ".join(f"{source} {info['version']}" for source, info in used.items()), file=sys.stderr)

    record = {"sources": used, "left_out": {"families": found.missing, "files": found.skipped}, "parts": {}}
    for index, (part, names) in enumerate(parts.items()):
        start = time.perf_counter()
        split, family = fonts.render([found.fonts[name] for name in names], p, np.random.default_rng([p.seed, index]))
        fonts.save(out / f"{part}.pt", split, family, names)
        record["parts"][part] = {
            "families": {name: {"kind": fonts.FAMILIES[name].kind, "source": fonts.FAMILIES[name].source,
                                "fonts": [font.name for font in found.fonts[name]]} for name in names},
            "images": len(split),
            "per_class": split.labels.bincount(minlength=10).tolist(),
            "per_family": dict(zip(names, family.bincount(minlength=len(names)).tolist(), strict=True)),
            "md5": fonts.content_md5(split),
        }  # fmt: skip
        print(f"{part}: {len(split)} images of {len(names)} families in {time.perf_counter() - start:.1f} s, "
              f"MD5 {record['parts'][part]['md5']}")  # fmt: skip
    files.write_json(out / "fonts.json", record)


if __name__ == "__main__":
    stage.run(main)
