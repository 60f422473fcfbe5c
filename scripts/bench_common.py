"""What every benchmark script shares: the result file with its date and machine."""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path


def write_result(path: str, result: dict) -> dict:
    """Write `result` as JSON to `path`, stamped with the UTC date and the machine it ran on."""
    import torch

    stamped = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())},
        **result,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stamped, indent=2))
    return stamped
