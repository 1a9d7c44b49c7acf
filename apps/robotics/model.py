"""The vision-language encoder of the policy: pretrained towers, FiLM, spatial-softmax keypoints.

What it computes, and why each piece:

1. **Image tower**: EfficientNet-Lite0 (``core.towers.efficientnet_lite0``, the real ImageNet
   weights) split after ``trunk_split`` blocks into a frozen trunk and a ``top`` of the next
   ``top_blocks`` block(s) only. Cutting the top short keeps the map *spatial* (blocks 0-2 of
   a 96 px image give a 40 x 12 x 12 map): manipulation needs *where* things are, and the
   prototype got 0 success from pooled features. The input is pixels (``(B, 3, H, W)``, uint8
   0-255 or float 0-1) or trunk features cached once (``(B, C, h, w)``, float16 allowed),
   which skips the trunk during training. Batch norms stay in eval (``SplitEncoder``).
2. **FiLM** (Perez et al. 2018; RT-1 conditions its EfficientNet the same way): the
   instruction embedding gives a per-channel ``gamma, beta`` and the map becomes
   ``map * (1 + gamma) + beta``, so *which* target to look at can change *where* the
   keypoints go. The FiLM layer starts at zero (identity), leaving the pretrained map intact.
3. **Spatial softmax** (Levine et al. 2016; LeRobot's diffusion policy): a 1x1 conv makes
   ``num_keypoints`` heat maps; a softmax over each map's pixels gives an expected ``(x, y)``
   in [-1, 1] per keypoint.
4. **MLP** over ``[keypoints, normalised proprio, instruction embedding]`` -> ``feature_dim``.

The text tower (all-MiniLM-L6-v2 through ``core.towers.TextTower``) is frozen and held
*outside* the module tree: it is not a parameter, not in ``state_dict`` and never in a saved
adapter. Its embeddings are cached by string, so the few instructions of a dataset cost one
encoder call each. Tests inject a tiny callable instead (``text_tower=``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.towers import SplitEncoder, efficientnet_lite0, normalize_pixels

TextFn = Callable[[list[str]], Tensor]


# ----------------------------------------------------------------------------- text
class TextEmbedder:
    """A frozen sentence encoder with an in-memory ``{instruction: embedding}`` cache.

    ``""`` is a valid (blank) instruction and is embedded like any other string. Not an
    ``nn.Module`` on purpose: nothing of it is trained or saved with the policy.

    Args:
        tower: ``list[str] -> (B, D)`` tensor; None loads MiniLM (``core.towers.TextTower``).
        max_cache: Entries kept before the cache is cleared (a guard, not a tuning knob).
    """

    def __init__(self, tower: TextFn | None = None, max_cache: int = 100_000) -> None:
        if tower is None:
            from core.towers import TextTower

            tower = TextTower()
        self.tower = tower
        self.max_cache = max_cache
        self.cache: dict[str, Tensor] = {}
        self.token_cache: dict[str, Tensor] = {}
        self.calls = 0  # encoder calls made (a cache hit makes none)
        dim = getattr(tower, "dim", None)
        self.dim = int(dim) if isinstance(dim, int) else int(self._encode([""]).shape[1])

    def _encode(self, texts: list[str]) -> Tensor:
        self.calls += 1
        with torch.no_grad():
            out = self.tower(texts)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(texts):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the text tower must return a (len(texts), D) tensor; got {shape} for "
                f"{len(texts)} texts"
            )
        return out.detach().float().cpu()

    def __call__(self, instructions: Sequence[str]) -> Tensor:
        """``(B, D)`` float32 CPU embeddings of ``instructions``."""
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise TypeError(
                "instructions must be a list of strings (one per sample; '' for a blank "
                f"instruction); got {type(instructions).__name__}"
            )
        missing = sorted({s for s in instructions if s not in self.cache})
        if missing:
            if len(self.cache) + len(missing) > self.max_cache:
                self.cache.clear()
            for text, emb in zip(missing, self._encode(missing), strict=True):
                self.cache[text] = emb
        if not instructions:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[s] for s in instructions])

    def tokens(self, instructions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token states ``(B, L, D)`` (zero-padded) and mask ``(B, L)`` of ``instructions``.

        From the tower's ``token_states`` where it has one (MiniLM); a tower with only
        sentence embeddings gives each instruction as one token (its embedding).
        """
        if isinstance(instructions, str):
            raise TypeError("instructions must be a list of strings, not one string")
        missing = sorted({s for s in instructions if s not in self.token_cache})
        if missing:
            if len(self.token_cache) + len(missing) > self.max_cache:
                self.token_cache.clear()
            states = getattr(self.tower, "token_states", None)
            if callable(states):
                self.calls += 1
                hidden, mask = states(missing)
                for i, text in enumerate(missing):
                    self.token_cache[text] = hidden[i, mask[i]].detach().float().cpu()
            else:
                for text, emb in zip(missing, self(missing), strict=True):
                    self.token_cache[text] = emb[None]
        rows = [self.token_cache[s] for s in instructions]
        length = max((r.shape[0] for r in rows), default=1)
        out = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            out[i, : row.shape[0]], mask[i, : row.shape[0]] = row, True
        return out, mask


def build_text_embedder(tower: TextFn | TextEmbedder | None = None) -> TextEmbedder:
    """A :class:`TextEmbedder` around ``tower`` (MiniLM when None; an embedder as is)."""
    return tower if isinstance(tower, TextEmbedder) else TextEmbedder(tower)


# ----------------------------------------------------------------------------- layers
class AttentionPool(nn.Module):
    """Multi-head attention pooling of token states by learned queries, L2-normalised.

    Each of ``heads`` heads weighs the tokens by ``softmax(q_h . k_t / sqrt(d))`` on its
    slice of the width. The queries start at zero, so at initialisation every token weighs
    the same and the output is exactly the sentence encoder's mean pooling; training can
    then turn the attention to the words that decide the task (the colours), which carries
    over to wording never seen in training (the held-out paraphrases).
    """

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"text width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(heads, dim // heads))

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """``states`` ``(B, L, D)``, ``mask`` ``(B, L)`` True at tokens -> ``(B, D)``."""
        b, length, dim = states.shape
        split = states.view(b, length, self.heads, dim // self.heads)
        scores = torch.einsum("blhd,hd->bhl", split, self.query) / math.sqrt(dim // self.heads)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        pooled = torch.einsum("bhl,blhd->bhd", weights, split).reshape(b, dim)
        return F.normalize(pooled, dim=-1)


class FiLM(nn.Module):
    """``x * (1 + gamma(c)) + beta(c)`` per channel of a ``(B, C, h, w)`` map.

    Starts at the identity (zero projection), so the pretrained map is unchanged at first.
    """

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.proj(cond).to(x.dtype).chunk(2, dim=-1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class SpatialSoftmax(nn.Module):
    """Keypoints: 1x1 conv to K heat maps, softmax over pixels, expected (x, y) in [-1, 1].

    Returns ``(B, K, 2)``. The softmax temperature is learned (robomimic's variant).
    """

    def __init__(self, channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, num_keypoints, kernel_size=1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.num_keypoints = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        heat = self.conv(x).flatten(2) / self.log_temperature.exp()  # (B, K, h*w)
        attention = heat.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=attention.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=attention.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)
        return attention @ grid


# ----------------------------------------------------------------------------- encoder
class VisionLanguageEncoder(nn.Module):
    """Image + instruction + proprio -> a ``(B, feature_dim)`` feature vector.

    Args:
        pretrained: ImageNet weights for the image tower (``False``: random init seeded with
            ``seed``, for the pretrained-vs-scratch ablation).
        trunk_split: Blocks of EfficientNet-Lite0 in the frozen trunk.
        top_blocks: Blocks after the trunk in the fine-tunable ``top`` (the rest is dropped);
            0: no top, the frozen trunk's map is the image feature (nothing of the image
            tower trains, and cached trunk features make a training step very cheap).
        num_keypoints: Spatial-softmax keypoints.
        feature_dim: Size of the output features.
        proprio_dim: Size of the (normalised) proprioception vector.
        hidden_dim: Width of the output MLP.
        text_tower: ``list[str] -> (B, D)`` callable or :class:`TextEmbedder`; None = MiniLM.
        seed: Seed of the random initialisation when ``pretrained=False``.
        image_tower: A ready ``SplitEncoder`` to use instead of building one (tests).
        text_heads: Heads of the attention pooling over the instruction's tokens
            (:class:`AttentionPool`; zero-initialised, so training starts from mean pooling).
    """

    def __init__(
        self,
        pretrained: bool = True,
        trunk_split: int = 2,
        top_blocks: int = 1,
        num_keypoints: int = 32,
        feature_dim: int = 256,
        proprio_dim: int = 2,
        hidden_dim: int = 256,
        text_tower: TextFn | TextEmbedder | None = None,
        seed: int = 0,
        image_tower: SplitEncoder | None = None,
        text_heads: int = 4,
    ) -> None:
        super().__init__()
        if image_tower is None:
            image_tower = self.build_image_tower(pretrained, trunk_split, top_blocks, seed)
        self.image = image_tower
        self.channels = (
            _out_channels(self.image.top) if len(self.image.top) else self.trunk_channels
        )
        # Held outside the module tree (object.__setattr__): not trained, not saved.
        object.__setattr__(self, "text", build_text_embedder(text_tower))
        self.text_dim = self.text.dim
        self.text_pool = AttentionPool(self.text_dim, heads=text_heads)
        self.film = FiLM(self.text_dim, self.channels)
        self.keypoints = SpatialSoftmax(self.channels, num_keypoints)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_keypoints + proprio_dim + self.text_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, feature_dim),
            nn.ReLU(),
        )
        self.feature_dim, self.proprio_dim, self.num_keypoints = (
            feature_dim,
            proprio_dim,
            num_keypoints,
        )
        self.config = {
            "pretrained": pretrained,
            "trunk_split": trunk_split,
            "top_blocks": top_blocks,
            "num_keypoints": num_keypoints,
            "feature_dim": feature_dim,
            "proprio_dim": proprio_dim,
            "hidden_dim": hidden_dim,
            "seed": seed,
            "text_heads": text_heads,
        }

    @staticmethod
    def build_image_tower(
        pretrained: bool, trunk_split: int, top_blocks: int, seed: int = 0
    ) -> SplitEncoder:
        """EfficientNet-Lite0 split at ``trunk_split`` with a ``top`` of ``top_blocks`` blocks."""
        if pretrained:
            tower = efficientnet_lite0(split=trunk_split, weights="package")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tower = efficientnet_lite0(split=trunk_split, weights=None)
        # SplitEncoder's top is (block stages..., conv_head, bn2): keep the first stages.
        blocks = [m for m in tower.top if isinstance(m, nn.Sequential)]
        if not 0 <= top_blocks <= len(blocks):
            raise ValueError(
                f"top_blocks={top_blocks} must lie in [0, {len(blocks)}] for "
                f"trunk_split={trunk_split} (EfficientNet-Lite0 has 7 blocks)"
            )
        tower.top = nn.Sequential(*blocks[:top_blocks])
        return tower.eval()

    @property
    def trunk_channels(self) -> int:
        """Channels of cached trunk features (24 at the default split)."""
        return int(self.image.trunk_channels)

    def train(self, mode: bool = True) -> VisionLanguageEncoder:
        super().train(mode)
        self.image.train(mode)  # keeps batch norms in eval
        return self

    # ------------------------------------------------------------------ pieces
    def prepare_image(self, image: Tensor) -> Tensor:
        """Pixels -> the tower's input range; trunk features pass through unchanged."""
        if image.ndim != 4:
            raise ValueError(
                f"image must be (B, 3, H, W) pixels or (B, {self.trunk_channels}, h, w) trunk "
                f"features; got shape {tuple(image.shape)}"
            )
        if image.shape[1] == 3 and self.trunk_channels != 3:
            pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
            return normalize_pixels(pixels)
        return image

    @torch.no_grad()
    def trunk_features(self, image: Tensor) -> Tensor:
        """Trunk features of pixels ``(B, 3, H, W)`` (uint8 or [0, 1] float): what to cache."""
        return self.image.features(self.prepare_image(image))

    def feature_map(self, image: Tensor) -> Tensor:
        """The top's spatial map ``(B, C, h, w)`` of pixels or trunk features (the trunk's
        own map, in float32, when the top is empty)."""
        return self.image.feature_map(self.prepare_image(image))

    def embed(self, instructions: Sequence[str], device: torch.device | None = None) -> Tensor:
        """Instruction embeddings ``(B, D)``: the cached token states, pooled by the learned
        :class:`AttentionPool`, on ``device`` (default: the pooling's)."""
        states, mask = self.text.tokens(list(instructions))
        device = device if device is not None else self.text_pool.query.device
        return self.text_pool(states.to(device), mask.to(device))

    def keypoints_of(self, image: Tensor, text: Tensor) -> Tensor:
        """``(B, K, 2)`` keypoints of the FiLM-conditioned map (``text``: embeddings)."""
        fmap = self.feature_map(image)
        return self.keypoints(self.film(fmap, text.to(fmap.device, fmap.dtype)))

    def forward(
        self, image: Tensor, proprio: Tensor, instructions: Sequence[str] | Tensor
    ) -> Tensor:
        """``(B, feature_dim)`` features.

        Args:
            image: ``(B, 3, H, W)`` pixels or ``(B, C, h, w)`` trunk features.
            proprio: ``(B, proprio_dim)`` normalised proprioception.
            instructions: ``B`` strings, or ready ``(B, D)`` embeddings (used as they are,
                without the attention pooling).
        """
        if isinstance(instructions, Tensor):
            text = instructions.float()
        else:
            text = self.embed(instructions)
        if text.shape[0] != image.shape[0] or proprio.shape[0] != image.shape[0]:
            raise ValueError(
                f"batch sizes differ: image {image.shape[0]}, proprio {proprio.shape[0]}, "
                f"instructions {text.shape[0]}"
            )
        if proprio.ndim != 2 or proprio.shape[1] != self.proprio_dim:
            raise ValueError(
                f"proprio must be (B, {self.proprio_dim}); got shape {tuple(proprio.shape)}"
            )
        first = next(self.mlp.parameters())  # (an adapter may wrap the layer itself)
        device, dtype = first.device, first.dtype
        text = text.to(device)
        points = self.keypoints_of(image.to(device), text).flatten(1)
        x = torch.cat([points.to(dtype), proprio.to(device, dtype), text.to(dtype)], dim=-1)
        return self.mlp(x)


def _out_channels(top: nn.Module) -> int:
    """Output channels of the last conv in ``top`` (the map's channel count)."""
    convs = [m for m in top.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the image tower's top has no convolution; cannot size the FiLM layer")
    return int(convs[-1].out_channels)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Parameters of ``module`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def fake_text_tower(dim: int = 16) -> TextFn:
    """A deterministic stand-in for MiniLM: a string's embedding seeded by its bytes.

    For tests and quick smoke runs only; it knows nothing of meaning.
    """
    import zlib

    def tower(texts: list[str]) -> Tensor:
        rows = []
        for text in texts:
            g = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
            rows.append(F.normalize(torch.randn(dim, generator=g), dim=0))
        return torch.stack(rows) if rows else torch.zeros(0, dim)

    tower.dim = dim  # type: ignore[attr-defined]
    return tower


__all__: list[str] = [
    "FiLM",
    "SpatialSoftmax",
    "TextEmbedder",
    "VisionLanguageEncoder",
    "build_text_embedder",
    "count_parameters",
    "fake_text_tower",
]
