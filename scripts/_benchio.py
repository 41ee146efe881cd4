"""What the bench scripts share: writing their results as JSON."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str | os.PathLike[str], res: Any) -> None:
    """``res`` as indented JSON at ``path`` (its directory made; NumPy scalars as floats), and say so."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=2, default=float)
        f.write("\n")
    print(f"wrote {path}")
