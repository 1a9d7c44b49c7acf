"""The base of the modules whose network reads a radiograph with an image encoder.

Report generation and classification start from the same 1-channel encoders, so the
encoder's options are listed here, once: which encoder and its shape, its own local weights
(``encoder_pretrained``), a second adapter on it alone (``encoder_adapter``), and the local
weights of the whole network (``pretrained``, a checkpoint of the same module). A task
module passes its network builder and every option it does not use itself through to this
class (``super().__init__(network=..., **kwargs)``), and this class passes the
:class:`~core.training.FineTuneModule` options on (``adapter``, ``modules_to_save``,
``regularizers``, ``optimizer``, ``lr_scheduler``, ``monitor``, ``calibration_batches``).

Per-part adapters: the core's ``adapter`` may target any module of the network
(``q_proj``/``v_proj`` hit only a report generator's decoder), and ``encoder_adapter`` puts a
second adapter, of any method, on the image encoder alone (e.g. LoRA on the decoder and SSF
on the encoder); it is exported next to the main one as ``<run_dir>/adapter_encoder/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from core.adapters import AdapterConfig, inject, save_adapter
from core.training import FineTuneModule, coerce_adapter_config, default_loss

from .model import ImageEncoder, build_encoder
from .weights import load_network_state, read_checkpoint

#: Builds a task's network around the encoder; gets the ``pretrained`` checkpoint (or
#: ``None``) to read what else it needs from it (a tokenizer) before the weights are loaded.
NetworkBuilder = Callable[[ImageEncoder, dict[str, Any] | None], nn.Module]


class EncoderModule(FineTuneModule):
    """A :class:`~core.training.FineTuneModule` whose network has an ``encoder`` attribute.

    The module never calls the base's ``loss`` (each task fixes its own), so it is not an
    option.

    Args:
        network: The task module's builder (see :data:`NetworkBuilder`); not an option.
        encoder: ``"efficientnet_lite0"`` (the recipes' choice), ``"vit_tiny"``,
            ``"densenet121"`` (timm), ``"monai_densenet121"`` or any other timm model name
            (:func:`~.model.build_encoder`).
        image_size: Input side; set from ``data.image_size`` (the two are linked).
        vit_dim: Width of ``vit_tiny``.
        vit_depth: Blocks of ``vit_tiny``.
        vit_heads: Attention heads of ``vit_tiny``.
        patch_size: Patch side of ``vit_tiny`` (``image_size`` must be a multiple).
        encoder_pretrained: The encoder backbone's weights: ``imagenet`` (the installed
            ImageNet weights; ``efficientnet_lite0`` only), a local state-dict file of the
            encoder's architecture, or empty (random initialisation).
        encoder_adapter: A second adapter on the encoder only (see the module doc).
        pretrained: A Lightning checkpoint of this module, same architecture options: its
            network weights are loaded before adapters are injected (fine-tune a trained
            model). Adapter layers in it must have been merged.
        **kwargs: The :class:`~core.training.FineTuneModule` options, passed through.
    """

    def __init__(
        self,
        network: NetworkBuilder,
        encoder: str = "vit_tiny",
        image_size: int = 64,
        vit_dim: int = 128,
        vit_depth: int = 2,
        vit_heads: int = 4,
        patch_size: int = 8,
        encoder_pretrained: str | None = None,
        encoder_adapter: AdapterConfig | None = None,
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> None:
        checkpoint = read_checkpoint(pretrained) if pretrained else None
        image_encoder = build_encoder(
            encoder,
            image_size,
            encoder_pretrained,
            vit_dim=vit_dim,
            vit_depth=vit_depth,
            vit_heads=vit_heads,
            patch_size=patch_size,
        )
        net = network(image_encoder, checkpoint)
        if checkpoint is not None:
            load_network_state(net, checkpoint, str(pretrained))
        super().__init__(model=net, loss=default_loss, **kwargs)
        self.image_size = image_size
        self.encoder_adapter_config = coerce_adapter_config(encoder_adapter)
        if self.encoder_adapter_config is not None:
            try:
                inject(self.model.encoder, self.encoder_adapter_config, name="encoder")
            except (ValueError, TypeError) as err:
                raise ValueError(f"model.encoder_adapter: {err}") from err

    def setup(self, stage: str) -> None:
        """Check that the data's images have the network's input size, then set up."""
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "image_size", None)
        if size is not None and size != self.image_size:
            raise ValueError(
                f"data.image_size={size}, but the network takes {self.image_size}-pixel images; "
                f"set --data.image_size {self.image_size}."
            )
        super().setup(stage)

    def on_fit_end(self) -> None:
        """Export the encoder adapter to ``<run_dir>/adapter_encoder/`` (global rank zero)."""
        if self.encoder_adapter_config is None or not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        path = save_adapter(self.model.encoder, run_dir / "adapter_encoder", name="encoder")
        rank_zero_info(f"encoder adapter written to {path}")
