"""The tray icon's pictures, drawn with Pillow (no image files to ship): one colour per state, a progress
ring while something downloads or loads, a cross when the daemon is unreachable."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

    from warm.tray.state import Status

SIZE = 64
COLOURS = {"idle": (120, 120, 120), "ready": (46, 160, 67), "busy": (30, 110, 200), "error": (200, 50, 40),
           "unreachable": (90, 90, 90)}


def draw(status: Status) -> Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    colour = COLOURS[status.kind] + (255,)
    box = (4, 4, SIZE - 4, SIZE - 4)
    if status.kind == "unreachable":
        pen.ellipse(box, outline=colour, width=6)
        pen.line((18, 18, SIZE - 18, SIZE - 18), fill=colour, width=6)
        pen.line((18, SIZE - 18, SIZE - 18, 18), fill=colour, width=6)
        return image
    pen.ellipse(box, fill=colour)
    if status.kind == "busy" and status.progress is not None:
        pen.arc((10, 10, SIZE - 10, SIZE - 10), -90, -90 + 360 * max(0.02, min(status.progress, 1.0)),
                fill=(255, 255, 255, 255), width=7)
    elif status.kind == "error":
        pen.rectangle((SIZE // 2 - 4, 16, SIZE // 2 + 4, 38), fill=(255, 255, 255, 255))
        pen.rectangle((SIZE // 2 - 4, 44, SIZE // 2 + 4, 51), fill=(255, 255, 255, 255))
    return image
