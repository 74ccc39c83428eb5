"""`DIGITS_ISA=avx2` (scripts/avx2.env) really makes an AVX-512 host pick AVX2 kernels: PyTorch's own, Inductor's
generated code and oneDNN's convolutions, forward and backward. On an AVX2-only host the same holds trivially."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO, clean_env

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "TORCHINDUCTOR_CACHE_DIR")
COMPILED = """
import sys, torch
from digits import models, training
torch.manual_seed(0)
model = models.build("cnn", 0.13, 0.31, width=4, stages=2, depth=1, head=0, dropout=0.0).eval()
x = torch.rand(32, 1, 28, 28)
eager = training.predict_logits(model, x)
compiled = training.predict_logits(models.for_inference(model, torch.device("cpu"), compile=True), x)
print((compiled - eager).abs().max().item())
"""
PROBE = """
import json, torch
from torch._inductor import cpu_vec_isa
x = torch.randn(4, 1, 28, 28, requires_grad=True)
torch.nn.Conv2d(1, 8, 3)(x).sum().backward()
print(json.dumps({"aten": torch.backends.cpu.get_cpu_capability(), "inductor": str(cpu_vec_isa.pick_vec_isa())}))
"""


def native_env(**extra: str) -> dict[str, str]:
    """This test run's environment without any imitation (the suite itself may run under DIGITS_ISA=avx2)."""
    return {**{k: v for k, v in clean_env().items() if k not in ISA_VARIABLES}, **extra}


def imitation_env() -> dict[str, str]:
    """The variables scripts/avx2.env sets, read the way dev.sh reads them (bash `source`) in ``native_env``."""
    script = f"set -a; source {REPO / 'scripts/avx2.env'}; set +a; env -0"
    out = subprocess.run(["bash", "-c", script], env=native_env(), capture_output=True, text=True, check=True).stdout
    variables = dict(line.split("=", 1) for line in out.split("\0") if "=" in line)
    return {k: v for k, v in variables.items() if k in ISA_VARIABLES}


def test_avx2_env_sets_one_variable_per_library_and_its_own_inductor_cache():
    assert set(imitation_env()) == set(ISA_VARIABLES)
    assert imitation_env()["TORCHINDUCTOR_CACHE_DIR"].endswith("-avx2")


def test_compiled_inference_is_right_under_the_imitation_after_a_native_compile():
    """The same graph compiled natively first (into Inductor's default cache), then under the imitation: without a
    cache of its own the imitation reuses the native kernel and its logits are garbage (or the process crashes)."""
    for env in (native_env(), native_env(**imitation_env())):
        proc = subprocess.run([sys.executable, "-c", COMPILED], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert float(proc.stdout.splitlines()[-1]) < 1e-4


def test_avx2_imitation_reaches_aten_inductor_and_onednn():
    env = native_env(**imitation_env(), ONEDNN_VERBOSE="1")
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
