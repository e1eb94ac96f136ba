"""Draws the demo images in demo/images: simple synthetic scenes the project owns (no dataset
images), one object each, in three sizes and aspect ratios, and each object's true mask in
demo/masks (0 background, 255 object; the shadow under the ball is background). The masks let a
test score a bundle on the demo images (tests/demo_quality.rs).

    python demo/make_images.py   # needs Pillow and numpy (models/requirements.txt)
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent / "images"
MASKS = Path(__file__).resolve().parent / "masks"


def gradient(w, h, top, bottom):
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    rows = (1 - t) * np.array(top, float) + t * np.array(bottom, float)
    return Image.fromarray(np.repeat(rows, w, axis=1).astype(np.uint8), "RGB")


def ball_mask():
    m = Image.new("L", (640, 480), 0)
    # The largest disc of the shaded sphere; the smaller ones lie inside it.
    ImageDraw.Draw(m).ellipse((300 - 45, 180 - 45, 300 + 90 + 45, 180 + 90 + 45), fill=255)
    return m


def mug_mask():
    m = Image.new("L", (480, 640), 0)
    d = ImageDraw.Draw(m)
    d.ellipse((300, 260, 400, 400), outline=255, width=22)
    d.rounded_rectangle((120, 220, 330, 470), radius=30, fill=255)
    d.ellipse((120, 200, 330, 250), fill=255)
    return m


def leaf_mask():
    m = Image.new("L", (800, 500), 0)
    d = ImageDraw.Draw(m)
    d.polygon([(150, 260), (330, 110), (620, 170), (690, 250), (560, 360), (300, 390)], fill=255)
    d.line((150, 260, 690, 250), fill=255, width=6)
    for x in range(240, 640, 70):
        d.line((x, 255, x + 60, 160), fill=255, width=3)
        d.line((x, 255, x + 50, 350), fill=255, width=3)
    return m


def ball():
    img = gradient(640, 480, (120, 170, 220), (60, 120, 50))
    d = ImageDraw.Draw(img)
    d.ellipse((380, 330, 560, 380), fill=(40, 70, 30))  # shadow
    for r in range(90, 0, -3):  # a shaded sphere: lighter towards the upper left
        c = 255 - int(150 * r / 90)
        d.ellipse((300 + (90 - r) // 3 - r // 2, 180 + (90 - r) // 3 - r // 2, 300 + (90 - r) // 3 + r + r // 2, 180 + (90 - r) // 3 + r + r // 2), fill=(c, 40, 30))
    return img.filter(ImageFilter.GaussianBlur(1.2))


def mug():
    img = gradient(480, 640, (200, 170, 130), (150, 110, 70))
    d = ImageDraw.Draw(img)
    for y in range(0, 640, 24):  # table boards
        d.line((0, y, 480, y + 10), fill=(130, 95, 60), width=3)
    d.ellipse((300, 260, 400, 400), outline=(30, 60, 160), width=22)  # handle
    d.rounded_rectangle((120, 220, 330, 470), radius=30, fill=(40, 80, 190))
    d.ellipse((120, 200, 330, 250), fill=(25, 50, 130))
    return img.filter(ImageFilter.GaussianBlur(1.0))


def leaf():
    img = gradient(800, 500, (235, 235, 225), (210, 210, 200))
    d = ImageDraw.Draw(img)
    d.polygon([(150, 260), (330, 110), (620, 170), (690, 250), (560, 360), (300, 390)], fill=(70, 150, 60))
    d.line((150, 260, 690, 250), fill=(40, 100, 35), width=6)  # midrib
    for x in range(240, 640, 70):
        d.line((x, 255, x + 60, 160), fill=(45, 110, 40), width=3)
        d.line((x, 255, x + 50, 350), fill=(45, 110, 40), width=3)
    return img.filter(ImageFilter.GaussianBlur(1.5))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    MASKS.mkdir(parents=True, exist_ok=True)
    for name, make, mask in [("ball", ball, ball_mask), ("mug", mug, mug_mask), ("leaf", leaf, leaf_mask)]:
        make().save(OUT / f"{name}.png", optimize=True)
        mask().save(MASKS / f"{name}.png", optimize=True)
        print("wrote", OUT / f"{name}.png", "and", MASKS / f"{name}.png")
