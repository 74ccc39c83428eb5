"""`DIGITS_ISA=avx2` (scripts/avx2.env) really makes an AVX-512 host pick AVX2 kernels: PyTorch's own, Inductor's
generated code and oneDNN's convolutions, forward and backward. On an AVX2-only host the same holds trivially."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO, clean_env

PROBE = """
import json, torch
from torch._inductor import cpu_vec_isa
x = torch.randn(4, 1, 28, 28, requires_grad=True)
torch.nn.Conv2d(1, 8, 3)(x).sum().backward()
print(json.dumps({"aten": torch.backends.cpu.get_cpu_capability(), "inductor": str(cpu_vec_isa.pick_vec_isa())}))
"""


def imitation_env() -> dict[str, str]:
    """The variables scripts/avx2.env sets, read the way dev.sh reads them (bash `source`)."""
    script = f"set -a; source {REPO / 'scripts/avx2.env'}; set +a; env -0"
    out = subprocess.run(["bash", "-c", script], env={}, capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line and not line.startswith(("_", "PWD")))


def test_avx2_env_sets_one_variable_per_library():
    assert set(imitation_env()) >= {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"}


def test_avx2_imitation_reaches_aten_inductor_and_onednn():
    env = clean_env(**imitation_env(), ONEDNN_VERBOSE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    isa = json.loads(lines[-1])
    assert isa["aten"] == "AVX2" and isa["inductor"] == "avx2"
    assert any(",isa:Intel AVX2" in line for line in lines), [line for line in lines if ",isa:" in line]
    # oneDNN's verbose line: ...,convolution,<implementation>,<propagation kind>,...
    convolutions = {line.split(",")[7]: line.split(",")[6] for line in lines if ",convolution," in line}
    assert set(convolutions) == {"forward_training", "backward_data", "backward_weights"}, convolutions
    assert all("avx2" in impl and "avx512" not in impl for impl in convolutions.values()), convolutions
