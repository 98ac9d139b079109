"""Import-to-register hook for mm configs:
`custom_imports = dict(imports=["adaptor_peft.dense.mm_register"])`.

Importing it registers `MambaAdaptorPyramid` with whichever of MMDetection / mmsegmentation is installed
(force=True, so re-importing in a worker process is harmless).
"""

from __future__ import annotations

from .mm_registry import register_mm_backbones

#: The mm packages the backbone was registered with on import (empty when neither is installed).
REGISTERED: list[str] = register_mm_backbones(force=True)
