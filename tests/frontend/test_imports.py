"""What `import banyan.frontend` loads."""

from __future__ import annotations

import subprocess
import sys


def test_the_language_imports_no_model_code():
    """Programs that talk to a server need neither the model nor torch in their process."""
    code = ("import sys, banyan.frontend; print(sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('banyan.model', 'banyan.kernels', 'banyan.scheduler'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
