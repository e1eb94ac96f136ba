#!/usr/bin/env python3
"""Write DAVIS 2016 (../shared/data/video/DAVIS2016-train) as a flat still-image dataset that
`alignsam eval` reads: OUT/images/<seq>_<frame>.jpg and OUT/masks/<seq>_<frame>.png (symbolic links
to the shared files, nothing copied) and OUT/splits/{train,eval}.txt.

The shared copy has no eval split; the split is by sequence, the one models/train_small_sam.py
trains with (`davis_split`: every 4th sequence of splits/sequences.txt is held out), so eval frames
come from sequences the small SAM never saw.

    python models/davis_eval.py --data ../shared/data --out out/data/DAVIS2016
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def davis_split(data: Path) -> tuple[list[str], list[str]]:
    """DAVIS 2016 has no eval split in ../shared/data: every 4th sequence (in the order of
    splits/sequences.txt: car-shadow, drift-straight, paragliding-launch) is held out for eval,
    the other 11 are for training. models/train_small_sam.py imports this, so that the small SAM
    and every evaluation use the same held-out three; plain Python, no torch needed."""
    seqs = (data / "video/DAVIS2016-train/splits/sequences.txt").read_text().split()
    train = [s for i, s in enumerate(seqs) if i % 4 != 3]
    held = [s for i, s in enumerate(seqs) if i % 4 == 3]
    return train, held


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("out/data/DAVIS2016"))
    args = p.parse_args(argv)
    src = (args.data / "video/DAVIS2016-train").resolve()
    if not src.is_dir():
        raise SystemExit(f"{src}: not found (the shared data folder is expected at --data)")
    train, held = davis_split(args.data)
    for sub in ("images", "masks", "splits"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for name, seqs in (("train", train), ("eval", held)):
        ids = []
        for seq in seqs:
            for img in sorted((src / "images" / seq).glob("*.jpg")):
                mask = src / "masks" / seq / f"{img.stem}.png"
                if not mask.exists():
                    raise SystemExit(f"{mask}: missing mask for {img}")
                ident = f"{seq}_{img.stem}"
                for link, target in ((args.out / "images" / f"{ident}.jpg", img), (args.out / "masks" / f"{ident}.png", mask)):
                    if link.is_symlink() or link.exists():
                        link.unlink()
                    link.symlink_to(target)
                ids.append(ident)
        (args.out / "splits" / f"{name}.txt").write_text("\n".join(ids) + "\n")
        print(f"{name}: {len(seqs)} sequences, {len(ids)} frames ({', '.join(seqs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
