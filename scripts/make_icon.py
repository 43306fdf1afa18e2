"""Draws web/icon.png, the pack's icon on the Comfy Registry and in ComfyUI-Manager (pyproject.toml, Icon): a
painted disc whose lower half is wiped back to the canvas, the way an erasure adapter takes a concept off the
model. Run from the pack's folder: python scripts/make_icon.py"""

from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = 512
OUT = Path(__file__).resolve().parents[1] / "web" / "icon.png"


def main() -> None:
    canvas = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rounded_rectangle((16, 16, SIZE - 16, SIZE - 16), radius=96, fill=(24, 26, 38, 255))
    paint = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    brush = ImageDraw.Draw(paint)
    for ring, colour in enumerate([(255, 64, 160), (255, 140, 40), (250, 220, 60), (60, 220, 200), (90, 120, 255)]):
        inset = 96 + ring * 34
        brush.ellipse((inset, inset, SIZE - inset, SIZE - inset), fill=colour + (255,))
    # The wiped half: a diagonal band where the paint is gone, with a soft edge like an eraser's.
    wipe = Image.new("L", (SIZE, SIZE), 255)
    ImageDraw.Draw(wipe).polygon([(0, SIZE * 0.62), (SIZE, SIZE * 0.38), (SIZE, SIZE), (0, SIZE)], fill=0)
    paint.putalpha(ImageChops.darker(paint.getchannel("A"), wipe.filter(ImageFilter.GaussianBlur(6))))
    canvas.alpha_composite(paint)
    outline = ImageDraw.Draw(canvas)
    outline.ellipse((96, 96, SIZE - 96, SIZE - 96), outline=(200, 204, 220, 255), width=6)
    canvas.save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
