"""`benchmarks/gpu_check.py` on CPU: its arithmetic, its arguments, its failure handling, and
the dry run (tiny shapes under the Triton interpreter)."""

from __future__ import annotations

import json

import pytest
import torch

from banyan.benchmarks import gpu_check


def test_roofline_is_the_slower_of_memory_and_arithmetic():
    assert gpu_check.roofline_ms(4e9, 1e9, copy_bw=4e12, mm_rate=1e15) == pytest.approx(1.0)  # memory bound
    assert gpu_check.roofline_ms(1e6, 8e14, copy_bw=4e12, mm_rate=8e14) == pytest.approx(1000.0)  # compute bound


def test_error_metrics():
    ref = torch.tensor([1.0, -4.0, 2.0])
    assert gpu_check.max_rel_error(torch.tensor([1.0, -3.0, 2.0]), ref) == pytest.approx(0.25)
    assert gpu_check.mean_rel_error((torch.tensor([1.0, -4.0, 2.7]),), (ref,)) == pytest.approx(0.1)
    picked, wanted = torch.tensor([[3, 1, -1], [5, 6, 7]]), torch.tensor([[1, 3, -1], [5, 6, 8]])
    assert gpu_check.topk_miss_rate(picked, wanted) == pytest.approx((0 + 1 / 3) / 2)
    assert gpu_check.mismatch_rate(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5


def test_a_failing_or_inaccurate_kernel_is_recorded_and_the_check_goes_on():
    def broken():
        raise RuntimeError("PassManager::run failed")

    cpu = torch.device("cpu")
    timer = lambda fn: 1.0
    failed = gpu_check.run_case(gpu_check.Case("broken", broken, lambda: 0, gpu_check.max_rel_error, 1e-2, 1e6),
                                cpu, timer, 1e9, 1e12)
    assert failed["ok"] is False and "PassManager" in failed["failure"]
    off = gpu_check.run_case(gpu_check.Case("off", lambda: torch.ones(4) * 1.1, lambda: torch.ones(4),
                                            gpu_check.max_rel_error, 1e-2, bytes=2e6, flops=1e6), cpu, timer, 1e9, 1e12)
    assert off["ok"] is False and off["error"] == pytest.approx(0.1)
    assert off["roofline_ms"] == pytest.approx(2.0) and off["efficiency"] == pytest.approx(2.0)


def test_arguments(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "everything"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--dry-run"):
            gpu_check.main([])


def test_dry_run_checks_the_kernels_and_writes_one_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--skip-e2e", "--only", "attention", "small", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [c["name"] for c in result["cases"]]
    assert "indexer.decode.fp8" in names and "mhc.pre" in names and "sampling" in names
    assert result["failed"] == [] and result["versions"]["torch"] == torch.__version__
    for case in result["cases"]:
        assert case["ok"] and case["error"] <= case["tol"] and case["kernel_ms"] > 0 and case["roofline_ms"] > 0
    assert "checks passed" in capsys.readouterr().out


@pytest.mark.slow
def test_full_dry_run_with_the_model_benchmark(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {c["name"].split(".")[0] for c in result["cases"]} >= {"gemm", "moe", "router", "attention", "mhc"}
    assert [d["batch"] for d in result["end_to_end"]["decode"]] == [1, 2]
