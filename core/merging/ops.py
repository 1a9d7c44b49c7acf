"""Low-level helpers shared by the merge methods: chunking, exact selection, seeded noise.

Every merge method works on one tensor at a time and, inside a tensor, on flat chunks of
``CHUNK_ELEMENTS`` elements. Statistics a method needs over a whole tensor (the magnitude
that keeps the top 20 %, a maximum, a mean) are gathered in passes over the chunks, so a
method never holds more than a few chunks of temporaries, however large the tensor. This is
what keeps ``python -m core.merging`` near one tensor per input in memory.

Results never depend on the chunk size: selections are exact order statistics (radix
select on the float bit patterns), and random masks are drawn per fixed block of
``RNG_BLOCK`` elements from a generator seeded by (seed, tensor, model, block), so a mask
depends on the element's position only, not on memory layout or chunking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

#: Elements per chunk of the per-tensor passes (4 MiB of fp32). Tests may shrink it.
CHUNK_ELEMENTS = 1 << 20
#: Elements per block of seeded random numbers; fixed so masks never depend on chunking.
RNG_BLOCK = 1 << 16

_RADIX_BITS = 16
_RADIX_SIZE = 1 << _RADIX_BITS


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 when any input is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def chunk_slices(numel: int, chunk: int | None = None) -> Iterator[slice]:
    """Consecutive slices covering ``range(numel)`` (one empty slice for an empty tensor)."""
    chunk = chunk or CHUNK_ELEMENTS
    if numel == 0:
        yield slice(0, 0)
        return
    for start in range(0, numel, chunk):
        yield slice(start, min(start + chunk, numel))


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and any labels (tensor name, model index, block), stable
    across processes and platforms (unlike Python's ``hash``)."""
    text = "|".join([str(int(seed)), *(str(p) for p in parts)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def uniform_noise(seed: int, numel: int, sl: slice) -> Tensor:
    """U[0, 1) float32 numbers for the flat positions ``sl`` of a tensor of ``numel`` elements.

    Position ``i`` always gets the same number for the same ``seed``: numbers are drawn per
    block of :data:`RNG_BLOCK` positions from a generator seeded by ``(seed, block)``.
    """
    start, stop = sl.start, sl.stop
    if stop <= start:
        return torch.empty(0)
    pieces = []
    for block in range(start // RNG_BLOCK, (stop - 1) // RNG_BLOCK + 1):
        first = block * RNG_BLOCK
        length = min(RNG_BLOCK, numel - first)
        gen = torch.Generator().manual_seed(derive_seed(seed, block))
        values = torch.rand(length, generator=gen)
        pieces.append(values[max(start, first) - first : min(stop, first + length) - first])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def kth_smallest(
    values: Callable[[slice], Sequence[Tensor]],
    numel: int,
    ks: Sequence[int | None],
    chunk: int | None = None,
) -> list[float | None]:
    """Exact k-th smallest value (0-based ``k``) of several non-negative value streams.

    ``values(sl)`` returns, for the flat positions ``sl``, one 1-D float tensor per stream
    (all non-negative: magnitudes, scores). ``ks[i]`` is the rank wanted from stream ``i``
    (``None``: skip it). A tensor that fits in one chunk uses ``torch.kthvalue``; a larger
    one uses a radix select over the float bit patterns (which order like the values for
    non-negative floats), two passes of 16 bits for float32, so memory stays at one chunk.
    Both give the same exact order statistic.
    """
    chunk = chunk or CHUNK_ELEMENTS
    for k in ks:
        if k is not None and not 0 <= k < numel:
            raise ValueError(
                f"rank k={k} is outside [0, {numel}) for a tensor of {numel} elements."
            )
    if all(k is None for k in ks):
        return [None] * len(ks)
    if numel <= chunk:
        streams = values(slice(0, numel))
        return [
            None if k is None else float(torch.kthvalue(v.reshape(-1), k + 1).values)
            for v, k in zip(streams, ks, strict=True)
        ]
    return _radix_select(values, numel, list(ks), chunk)


def _radix_select(
    values: Callable[[slice], Sequence[Tensor]], numel: int, ks: list[int | None], chunk: int
) -> list[float | None]:
    # Histograms live in numpy: single-threaded and cheap at 65,536 bins, where torch's
    # thread pool costs milliseconds per call on a busy machine.
    active = [i for i, k in enumerate(ks) if k is not None]
    remaining = {i: int(ks[i]) for i in active}  # type: ignore[arg-type]
    prefix = dict.fromkeys(active, 0)
    float_dtype: torch.dtype | None = None
    shifts: list[int] = []
    pass_index = 0
    while pass_index == 0 or pass_index < len(shifts):
        hists = {i: np.zeros(_RADIX_SIZE, dtype=np.int64) for i in active}
        for sl in chunk_slices(numel, chunk):
            streams = values(sl)
            if float_dtype is None:
                float_dtype = streams[active[0]].dtype
                width = 64 if float_dtype == torch.float64 else 32
                shifts = list(range(width - _RADIX_BITS, -1, -_RADIX_BITS))
            shift = shifts[pass_index]
            for i in active:
                v = streams[i].reshape(-1)
                if v.dtype == torch.float64:
                    bits = v.contiguous().view(torch.int64)
                else:
                    bits = v.float().contiguous().view(torch.int32).to(torch.int64)
                if pass_index > 0:
                    bits = bits[(bits >> (shift + _RADIX_BITS)) == prefix[i]]
                digits = ((bits >> shift) & (_RADIX_SIZE - 1)).numpy()
                hists[i] += np.bincount(digits, minlength=_RADIX_SIZE)
        for i in active:
            cumulative = np.cumsum(hists[i])
            digit = int(np.searchsorted(cumulative, remaining[i], side="right"))
            if digit > 0:
                remaining[i] -= int(cumulative[digit - 1])
            prefix[i] = (prefix[i] << _RADIX_BITS) | digit
        pass_index += 1
    result: list[float | None] = [None] * len(ks)
    for i in active:
        if float_dtype == torch.float64:
            result[i] = float(torch.tensor([prefix[i]], dtype=torch.int64).view(torch.float64))
        else:
            result[i] = float(torch.tensor([prefix[i]], dtype=torch.int32).view(torch.float32))
    return result


def magnitude_rank(numel: int, fraction: float) -> int:
    """How many of ``numel`` entries a fraction selects (rounded, within [0, numel])."""
    return min(numel, max(0, round(fraction * numel)))


def top_magnitude_thresholds(
    magnitudes: Callable[[slice], Sequence[Tensor]],
    numel: int,
    densities: Sequence[float],
    chunk: int | None = None,
) -> list[float]:
    """Per stream, the smallest magnitude among the top ``density`` fraction.

    Keeping ``|x| >= threshold`` keeps that fraction (plus any ties at the threshold).
    Density 1 gives ``0.0`` (keep all), a density that keeps nothing gives ``inf``.
    """
    ks: list[int | None] = []
    for density in densities:
        keep = magnitude_rank(numel, density)
        ks.append(None if keep in (0, numel) else numel - keep)
    found = kth_smallest(magnitudes, numel, ks, chunk)
    out = []
    for density, value in zip(densities, found, strict=True):
        keep = magnitude_rank(numel, density)
        out.append(0.0 if keep == numel else float("inf") if keep == 0 else float(value))
    return out
