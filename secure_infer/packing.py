"""Hospital-side input packing and slot layout (public: contains no weights).

The first convolution can be packed by the hospital as im2col with one block of ``P'`` slots per
kernel tap (``index = tap * P' + position``). The convolution then becomes a matrix whose only
nonzero generalized diagonals are multiples of ``P'``: a handful of plaintext multiplies and
``log2`` folding rotations instead of a dense matrix-vector product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["InputPacking", "next_pow2", "slots_to_outputs", "vectors_to_slots"]


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    p = 1
    while p < n:
        p *= 2
    return p


@dataclass(frozen=True)
class InputPacking:
    """How a preprocessed ``[C, H, W]`` input becomes one packed vector of ``length`` floats.

    ``kind == "flat"``: row-major flatten. ``kind == "im2col"``: taps x positions of the first
    convolution (``kernel``, ``stride``, ``pads`` = top, left, bottom, right; ``dilation``).
    """

    kind: str
    input_shape: tuple[int, int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.input_shape
        kh, kw = self.kernel
        dh, dw = self.dilation
        oh = (h + self.pads[0] + self.pads[2] - dh * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + self.pads[1] + self.pads[3] - dw * (kw - 1) - 1) // self.stride[1] + 1
        return oh, ow

    @property
    def positions(self) -> int:
        oh, ow = self.out_hw
        return oh * ow

    @property
    def position_block(self) -> int:
        """Slots per tap block (positions rounded up to a power of two)."""
        return next_pow2(self.positions)

    @property
    def taps(self) -> int:
        c = self.input_shape[0]
        return c * self.kernel[0] * self.kernel[1]

    @property
    def raw_length(self) -> int:
        if self.kind == "flat":
            c, h, w = self.input_shape
            return c * h * w
        return self.taps * self.position_block

    @property
    def length(self) -> int:
        return next_pow2(self.raw_length)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "pads": list(self.pads),
            "dilation": list(self.dilation),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> InputPacking:
        def t(key: str) -> tuple[int, ...]:
            v = d[key]
            assert isinstance(v, list | tuple)
            return tuple(int(x) for x in v)

        kind = str(d["kind"])
        if kind not in ("flat", "im2col"):
            raise ValueError(f"unknown packing kind {kind!r}")
        return cls(kind, t("input_shape"), t("kernel"), t("stride"), t("pads"), t("dilation"))  # type: ignore[arg-type]

    def pack(self, x: np.ndarray) -> np.ndarray:
        """``[N, C, H, W]`` (or ``[N, C*H*W]``) -> ``[N, length]`` zero-padded packed vectors."""
        n = x.shape[0]
        x = np.asarray(x, dtype=np.float64).reshape((n, *self.input_shape))
        out = np.zeros((n, self.length))
        if self.kind == "flat":
            out[:, : self.raw_length] = x.reshape(n, -1)
            return out
        c, h, w = self.input_shape
        kh, kw = self.kernel
        sh, sw = self.stride
        dh, dw = self.dilation
        pt, pl, pb, pr = self.pads
        xp = np.zeros((n, c, h + pt + pb, w + pl + pr))
        xp[:, :, pt : pt + h, pl : pl + w] = x
        oh, ow = self.out_hw
        pb_ = self.position_block
        t = 0
        for ci in range(c):
            for ky in range(kh):
                for kx in range(kw):
                    patch = xp[:, ci, ky * dh : ky * dh + sh * (oh - 1) + 1 : sh,
                               kx * dw : kx * dw + sw * (ow - 1) + 1 : sw]
                    out[:, t * pb_ : t * pb_ + oh * ow] = patch.reshape(n, -1)
                    t += 1
        return out


def vectors_to_slots(vectors: np.ndarray, slots: int, images: int) -> np.ndarray:
    """Tile each packed vector over ``slots // images`` elements and interleave the images."""
    per = slots // images
    k, length = vectors.shape
    assert k <= images and per % length == 0
    tiled = np.zeros((images, per))
    tiled[:k] = np.tile(vectors, (1, per // length))
    return tiled.T.reshape(-1)


def slots_to_outputs(values: np.ndarray, images: int, n_outputs: int, k: int) -> np.ndarray:
    """Inverse of :func:`vectors_to_slots` for the first ``n_outputs`` elements of ``k`` images."""
    per = values.shape[0] // images
    grid = np.asarray(values).reshape(per, images)
    return grid[:n_outputs, :k].T.copy()
