"""The image against its bmap: finding data the bmap does not map (a bmap made for
another image)."""

from __future__ import annotations

import os
from pathlib import Path

from appsdk.image.bmap.model import Bmap
from appsdk.image.bmap.writer import data_extents


def _first_nonzero(f: object, start: int, end: int) -> int | None:
    import io

    assert isinstance(f, io.BufferedReader)
    f.seek(start)
    pos = start
    while pos < end:
        chunk = f.read(min(end - pos, 4 * 1024 * 1024))
        if not chunk:
            return None
        if chunk.count(0) != len(chunk):
            return pos + len(chunk) - len(chunk.lstrip(b"\0"))
        pos += len(chunk)
    return None


def _gaps(start: int, end: int, spans: list[tuple[int, int]], i: int
          ) -> tuple[list[tuple[int, int]], int]:
    """Parts of [start, end) outside the sorted byte spans, from index i on; and the index
    to resume at for a later, larger `start`."""
    out = []
    while i < len(spans) and spans[i][1] <= start:
        i += 1
    pos, j = start, i
    while pos < end and j < len(spans) and spans[j][0] < end:
        if spans[j][0] > pos:
            out.append((pos, spans[j][0]))
        pos = max(pos, spans[j][1])
        j += 1
    if pos < end:
        out.append((pos, end))
    return out, i


def unmapped_data(image: Path, bmap: Bmap) -> int | None:
    """Offset of the first non-zero byte of `image` that no range maps, or None. bmaptool
    and appsdk map every block that holds data, so such a byte means the bmap was made for
    another image. Reads only the image's data extents outside the ranges: nothing for the
    sparse image a build leaves, everything unmapped for a copy that lost its holes."""
    bs = bmap.block_size
    spans = [(r.first * bs, (r.last + 1) * bs) for r in bmap.ranges]
    i = 0
    with image.open("rb") as f:
        for start, end in data_extents(f.fileno(), min(bmap.image_size,
                                                        os.fstat(f.fileno()).st_size)):
            gaps, i = _gaps(start, end, spans, i)
            for lo, hi in gaps:
                found = _first_nonzero(f, lo, hi)
                if found is not None:
                    return found
    return None
