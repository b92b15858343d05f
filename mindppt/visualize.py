"""Pictures of what PPT did to an image: after each compression block, pruned patches are greyed
out and the patches pooled into one token share a colour and an outline."""
import colorsys

import numpy as np
from PIL import Image, ImageDraw


def _palette(n, seed=0):
    rng = np.random.default_rng(seed)
    hues = rng.permutation(n) / max(n, 1)
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)) for h in hues]


def token_map(source, grid):
    """Original patch -> index of the token covering it (-1 for pruned), from a (tokens x (P + grid^2))
    source map whose first P columns are the class (and distillation) tokens."""
    patches = source[:, -grid * grid:]
    owner = np.where(patches.sum(axis=0) > 0, patches.argmax(axis=0), -1)
    return owner.reshape(grid, grid)


def draw_tokens(image, owner, alpha=0.45):
    """Overlay a token map (grid x grid of token ids, -1 pruned) on an RGB uint8 image."""
    height, width = image.shape[:2]
    grid = owner.shape[0]
    cell_h, cell_w = height / grid, width / grid
    base = Image.fromarray(image).convert("RGB")
    overlay = Image.new("RGB", base.size)
    mask = Image.new("L", base.size, 0)
    draw, draw_mask = ImageDraw.Draw(overlay), ImageDraw.Draw(mask)
    counts = np.bincount(owner[owner >= 0].ravel(), minlength=owner.max() + 2)
    colours = _palette(len(counts))
    for row in range(grid):
        for col in range(grid):
            box = [int(col * cell_w), int(row * cell_h), int((col + 1) * cell_w) - 1, int((row + 1) * cell_h) - 1]
            token = owner[row, col]
            if token < 0:  # pruned: dark grey
                draw.rectangle(box, fill=(40, 40, 40))
                draw_mask.rectangle(box, fill=200)
            elif counts[token] > 1:  # pooled group: shared colour
                draw.rectangle(box, fill=colours[token])
                draw_mask.rectangle(box, fill=int(255 * alpha))
    out = Image.composite(overlay, base, mask)
    outline = ImageDraw.Draw(out)
    for row in range(grid):  # borders between different tokens
        for col in range(grid):
            x0, y0 = int(col * cell_w), int(row * cell_h)
            if col + 1 < grid and owner[row, col] != owner[row, col + 1]:
                x = int((col + 1) * cell_w)
                outline.line([(x, y0), (x, int((row + 1) * cell_h))], fill=(255, 255, 255))
            if row + 1 < grid and owner[row, col] != owner[row + 1, col]:
                y = int((row + 1) * cell_h)
                outline.line([(x0, y), (int((col + 1) * cell_w), y)], fill=(255, 255, 255))
    return np.asarray(out)


def compression_figure(images, infos, grid, scale=4, titles=None):
    """One row per image: the input, then the token map after every compression block (with the
    policy and variance in the caption). ``images``: uint8 (B, H, W, 3); ``infos`` from
    ``inspect_compression`` of a model built with ``trace_source=True``."""
    height, width = images.shape[1] * scale, images.shape[2] * scale
    caption = 14
    columns = 1 + len(infos)
    sheet = Image.new("RGB", (columns * (width + 4), len(images) * (height + caption + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        big = np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))
        y = i * (height + caption + 4)
        sheet.paste(Image.fromarray(big), (0, y + caption))
        draw.text((2, y), titles[i] if titles else "input", fill="black")
        for j, info in enumerate(infos):
            if info.get("source") is None:
                raise ValueError("build the model with trace_source=True to draw token maps")
            owner = token_map(info["source"][i], grid)
            panel = draw_tokens(big, owner)
            x = (j + 1) * (width + 4)
            sheet.paste(Image.fromarray(panel), (x, y + caption))
            policy = "pool" if info["pooled"][i] else "prune"
            draw.text((x + 2, y), f"blk {info['block']} {policy} var {info['variance'][i]:.1e}", fill="black")
    return sheet
