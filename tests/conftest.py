"""Session-wide test setup.

Without a GPU the Triton kernels run in Triton's CPU interpreter. ``TRITON_INTERPRET`` must
be set before ``triton`` is first imported anywhere (its standard library is decorated at
import time), and collecting the other test packages imports Lightning, which may import
triton; so it is set here, in the first conftest pytest loads. Set ``TRITON_INTERPRET=0``
to skip the Triton cases instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
