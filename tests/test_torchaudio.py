"""torchaudio must import and run beside the pinned torch.

``torchaudio==2.11.*`` resolves to 2.11.1, whose library fails to load against torch 2.11.0
(``undefined symbol: torch_exception_get_what_without_backtrace``); pyproject pins 2.11.0.
The RNN-T loss is the compiled op the speech app trains with, so run it forward and backward.
"""

from __future__ import annotations

import torch


def test_torchaudio_imports_and_rnnt_loss_runs_forward_and_backward():
    import torchaudio
    import torchaudio.functional as F

    assert torchaudio.__version__.split("+")[0] == "2.11.0"
    torch.manual_seed(0)
    batch, frames, labels, classes = 2, 5, 3, 4
    logits = torch.randn(batch, frames, labels + 1, classes, requires_grad=True)
    targets = torch.randint(1, classes, (batch, labels), dtype=torch.int32)
    lengths = torch.full((batch,), frames, dtype=torch.int32)
    target_lengths = torch.full((batch,), labels, dtype=torch.int32)
    loss = F.rnnt_loss(logits, targets, lengths, target_lengths, blank=0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # Each (b, t, u) slot's gradient sums to zero over classes (softmax normalisation).
    assert logits.grad.sum(-1).abs().max() < 1e-5
