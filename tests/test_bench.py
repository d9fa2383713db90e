"""bench.py on CPU, so that it cannot rot."""
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_bench_cpu_smoke_reports_every_case(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "gdn_hybrid", "attention",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["preset"], r["seq_len"]) for r in rows] == [("gdn_hybrid", 64), ("attention", 64),
                                                           ("gdn_hybrid", 128), ("attention", 128)]
    for r in rows:
        assert r["tok_per_s"] > 0 and r["ms_per_step"] > 0 and r["flops_per_token"]["matmul"] > 0
    assert rows[0]["flops_per_token"]["gdn"] > 0 and rows[1]["flops_per_token"]["gdn"] == 0
    assert [r["vs_baseline"] for r in rows[1::2]] == [1.0, 1.0]  # attention over itself
    for hybrid, attention in (rows[0:2], rows[2:4]):
        assert hybrid["vs_baseline"] == pytest.approx(hybrid["tok_per_s"] / attention["tok_per_s"])
        assert f"| gdn_hybrid | {hybrid['seq_len']} | - | " in proc.stdout
        assert f"| {hybrid['vs_baseline']:.3f}x |" in proc.stdout
    assert "| MFU | vs attention |" in proc.stdout


def test_bench_interleave_times_live_cases_in_rounds(monkeypatch):
    """--interleave: every case of a length is built first, then timed case after case in each round; a row's ms/step
    is the median over all its steps and round_ms its per-round medians."""
    import bench
    built, timed = [], []
    monkeypatch.setattr(bench, "prepare_case", lambda preset, seq_len, tokens, warmup, extra, d, train_files: (
        built.append((preset, tuple(extra))) or dict(preset=preset, seq_len=seq_len, trainer=f"{preset}{extra}")))
    step_ms = iter([[1.0, 3.0], [10.0, 10.0], [2.0, 6.0], [20.0, 30.0], [9.0, 9.0], [40.0, 40.0]])
    monkeypatch.setattr(bench, "time_steps", lambda trainer, steps, d: timed.append(trainer) or next(step_ms))
    monkeypatch.setattr(bench, "finish_case", lambda case, times_ms, *rest: dict(
        preset=case["preset"], ms_per_step=bench.statistics.median(times_ms)))
    rows = bench.interleaved_cases([("gdn_hybrid", ""), ("attention", "muon_ns=eager")], 2048, 4096, 2, 1, 3,
                                   ["x=1"], None, 989.0, "", "")
    assert built == [("gdn_hybrid", ("x=1",)), ("attention", ("x=1", "muon_ns=eager"))]
    assert timed == ["gdn_hybrid['x=1']", "attention['x=1', 'muon_ns=eager']"] * 3
    assert rows == [dict(preset="gdn_hybrid", ms_per_step=4.5, round_ms=[2.0, 4.0, 9.0]),
                    dict(preset="attention", ms_per_step=25.0, round_ms=[10.0, 25.0, 40.0])]


def test_bench_cpu_smoke_interleaved(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "attention", "--variants", "",
                           "muon_ns=eager", "--interleave", "3", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["seq_len"], r["variant"], len(r["round_ms"])) for r in rows] == [
        (64, "", 3), (64, "muon_ns=eager", 3), (128, "", 3), (128, "muon_ns=eager", 3)]
    for r in rows:
        assert min(r["round_ms"]) <= r["ms_per_step"] <= max(r["round_ms"])
        assert f"variant:{r['variant'] or '-'} " in proc.stdout
    assert proc.stdout.count(" round_ms:") == 4


def test_bench_ratios_pair_rows_by_sequence_length_and_variant():
    import bench
    rows = [dict(preset=p, seq_len=s, variant=v, tok_per_s=t) for p, s, v, t in (
        ("gdn_hybrid", 2048, "", 90.0), ("attention", 2048, "", 100.0), ("gdn_hybrid", 8192, "", 150.0),
        ("attention", 8192, "", 100.0), ("gdn_hybrid", 8192, "model.conv_size=0", 160.0),
        ("attention", 8192, "model.conv_size=0", 80.0), ("gdn_hybrid", 4096, "", 120.0))]
    bench.add_ratios(rows, "attention")
    assert [r["vs_baseline"] for r in rows] == [0.9, 1.0, 1.5, 1.0, 2.0, 1.0, None]  # no attention at 4096


def test_bench_rejects_a_baseline_that_is_not_run():
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "gdn_hybrid", "--baseline", "attention"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--baseline attention: expected one of the presets run (gdn_hybrid)" in proc.stderr


def test_bench_rejects_a_malformed_short_conv_tile_setting():
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--short-conv-tiles", "64,32,8,2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert ("--short-conv-tiles '64,32,8,2': expected 7 positive integers ROWS,WARPS,DU_ROWS,DU_WARPS,DX_ROWS,DX_TILES,"
            "DX_WARPS" in proc.stderr)


def test_bench_inductor_settings_parse_and_reject_unknown_keys():
    import bench  # conftest puts the repo root on sys.path
    assert bench.inductor_settings(["model.conv_size=0", "inductor.max_autotune_gemm=True",
                                    "inductor.max_autotune_gemm_backends=TRITON"]) == dict(
        max_autotune_gemm=True, max_autotune_gemm_backends="TRITON")
    for bad, message in (("inductor.max_autotune_gemm=true", "takes a bool (now False), got 'true'"),
                         ("inductor.max_autotune_gemm", "expected inductor.KEY=VALUE")):
        with pytest.raises(ValueError, match=re.escape(message)):
            bench.inductor_settings([bad])
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "attention", "--variants",
                           "inductor.no_such_setting=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "'inductor.no_such_setting=1': expected inductor.KEY=VALUE with KEY a torch._inductor.config setting" in proc.stderr


def test_bench_rejects_an_unknown_code_path_variant():
    for token, expected in (("muon_ns=graphs", "variant muon_ns=graphs: expected muon_ns= one of ['eager', 'launched', 'separate_sums']"),
                            ("gdn_core=fla", "variant gdn_core=fla: expected gdn_core= one of ['fla_function', 'graph_break']")):
        proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "attention", "--variants", token],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-2000:]


def test_bench_times_real_shards_through_the_trainers_loader(synthetic_data, tmp_path):
    pattern = f"{synthetic_data['dir']}/synthetic_train_*.bin"
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "attention", "--train-files", pattern,
                           "--out", str(out), "model.vocab_size=8192"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["tokens_from"] for r in rows] == [pattern, pattern] and all(r["tok_per_s"] > 0 for r in rows)
    assert f"tokens:{pattern} " in proc.stdout
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "attention", "--train-files",
                           str(tmp_path / "none_*.bin")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"no shards match '{tmp_path}/none_*.bin'" in proc.stderr


def test_gpu_time_by_phase_charges_idle_gaps_to_the_phase_that_launched_the_next_kernel():
    import bench

    def op(name, ts, dur, tid=1, cat="cpu_op"):
        return dict(ph="X", cat=cat, name=name, ts=ts, dur=dur, pid=1, tid=tid)

    def launch(ts, corr, tid=1):
        return dict(ph="X", cat="cuda_driver", name="cuLaunchKernelEx", ts=ts, dur=1, pid=1, tid=tid, args=dict(correlation=corr))

    def kernel(ts, dur, corr):
        return dict(ph="X", cat="kernel", name=f"k{corr}", ts=ts, dur=dur, pid=0, tid=7, args=dict(correlation=corr))

    events = [
        op("forward", 0, 50), op("aten::mm", 10, 5),  # nested: the launch at 11 belongs to the outer op
        launch(11, 1), kernel(20, 30, 1),
        launch(40, 2), kernel(45, 20, 2),  # overlaps kernel 1 by 5 us: counted once
        op("backward", 0, 200, tid=2), launch(100, 3, tid=2), kernel(100, 50, 3),  # GPU idle 65..100 while tid 2 launched
        op("Optimizer.step#Muon.step", 210, 40, cat="user_annotation"), launch(212, 4), launch(230, 5),
        kernel(214, 6, 4), kernel(240, 10, 5),
        launch(300, 6), kernel(305, 5, 6),  # a launch outside every host op
        kernel(400, 1, 99),  # its launch is missing from the trace
    ]
    phases = bench.gpu_time_by_phase(events)
    assert phases == {
        "forward": dict(kernels=2, busy_us=45.0, idle_us=0.0),
        "backward": dict(kernels=1, busy_us=50.0, idle_us=35.0),
        "Optimizer.step#Muon.step": dict(kernels=2, busy_us=16.0, idle_us=64.0 + 20.0),
        "(outside host ops) cuLaunchKernelEx": dict(kernels=1, busy_us=5.0, idle_us=55.0),
        "(launch not in trace)": dict(kernels=1, busy_us=1.0, idle_us=90.0),
    }


def test_top_kernels_ranks_by_device_time_and_gives_per_call_and_per_step_figures():
    import bench
    kernels = [("triton_poi_fused_add_mul_4", 30, 591.0), ("short_conv_kernel", 32, 9747.2),
               ("prepare_wy_repr_bwd_kernel", 16, 7947.2), ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", 98, 14229.6)]
    rows = bench.top_kernels(kernels, steps=2, n=3)
    assert [r["name"] for r in rows] == ["nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "short_conv_kernel",
                                         "prepare_wy_repr_bwd_kernel"]
    assert [r["category"] for r in rows] == ["gemm", "fused short conv (harness)", "fla chunk delta rule"]
    assert rows[1]["us_per_call"] == pytest.approx(304.6) and rows[1]["calls_per_step"] == 16.0
    assert rows[1]["ms_per_step"] == pytest.approx(4.8736)
    assert [r["name"] for r in bench.top_kernels(kernels, steps=1)][-1] == "triton_poi_fused_add_mul_4"


def test_bench_profile_dir_writes_a_table_and_a_trace_per_case_on_cpu(tmp_path):
    """--profile-dir must not rot on CPU (no device kernels there, so the device sections are empty, but present)."""
    proc = subprocess.run([sys.executable, "bench.py", "--cpu-smoke", "--presets", "attention", "--profile-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"profile_attention_{n}.{ext}" for n in (128, 64)
                                                          for ext in ("trace.json.gz", "txt")]  # --cpu-smoke: 64 and 128
    text = (tmp_path / "profile_attention_64.txt").read_text()
    for header in ("device time per step by kernel category", "top kernels by device time, 2 profiled steps",
                   "GPU time per step by the host phase", "aten::mm"):
        assert header in text


def test_interleaved_times_ms_runs_the_calls_in_rounds(monkeypatch):
    """The component scripts' interleaved timer: every call once a round, in the given order, one median per round."""
    import bench
    order, clock = [], iter(range(1, 100))
    monkeypatch.setattr(bench, "cuda_median_ms", lambda fn, reps, warmup: (fn(), order.append((reps, warmup)), next(clock))[2])
    calls = []
    times = bench.interleaved_times_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, reps=7, warmup=2)
    assert calls == ["a", "b"] * 3 and order == [(7, 2)] * 6
    assert times == {"a": [1, 3, 5], "b": [2, 4, 6]}
    assert bench.spread_us(times["b"]) == "median 4000.0 us (min 2000.0, max 6000.0)"


def test_load_train_gpt_copy_imports_another_version_beside_this_one(tmp_path):
    import shutil

    import bench
    import train_gpt as tg
    copy = tmp_path / "old_train_gpt.py"
    shutil.copy(ROOT / "train_gpt.py", copy)
    other = bench.load_train_gpt_copy(copy, "test_copied_train_gpt")
    assert other.__file__ == str(copy) and other.ShortConv is not tg.ShortConv
    assert other.ShortConv.DX_ROWS == tg.ShortConv.DX_ROWS
    with pytest.raises(ValueError, match="notes.txt: cannot be imported"):
        bench.load_train_gpt_copy(tmp_path / "notes.txt")


FAKE_SMI = r'''#!/usr/bin/env python3
"""A stand-in for nvidia-smi --query-gpu ... -lms N: records its arguments, prints lines until terminated."""
import os, sys, time
open(os.environ["FAKE_SMI_ARGS"], "w").write("\n".join(sys.argv[1:]))
for line in os.environ["FAKE_SMI_LINES"].split(";"):
    print(line, flush=True)
if os.environ.get("FAKE_SMI_EXIT"):
    sys.exit(int(os.environ["FAKE_SMI_EXIT"]))
time.sleep(60)
'''


def fake_smi(monkeypatch, tmp_path, lines, exit_code=None):
    path = tmp_path / "bin" / "nvidia-smi"
    path.parent.mkdir(exist_ok=True)
    path.write_text(FAKE_SMI)
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{path.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SMI_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("FAKE_SMI_LINES", ";".join(lines))
    if exit_code is not None:
        monkeypatch.setenv("FAKE_SMI_EXIT", str(exit_code))
    return tmp_path / "args"


def sampler_started(args_file, settle_s: float = 0.5) -> None:
    """Wait until the fake nvidia-smi has run (it writes its arguments first), then a little for its output."""
    deadline = time.monotonic() + 60
    while not args_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)


def test_gpu_sampling_reads_nvidia_smi_while_the_steps_run(monkeypatch, tmp_path):
    """Run LD's nvidia-smi lines (an H200 at its 700 W cap, reasons 0x4) through a fake nvidia-smi on PATH: the samples,
    their summary, the GPU index under CUDA_VISIBLE_DEVICES, and the query sent."""
    import types
    import bench
    args = fake_smi(monkeypatch, tmp_path, ["1830, 690.65, 700.00, 0x0000000000000004",
                                            "1980, 271.85, 700.00, 0x0000000000000000",
                                            "1740, 687.59, 700.00, 0x0000000000000044", "345, [N/A], 700.00, [N/A]"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    samples = []
    with bench.gpu_sampling(types.SimpleNamespace(device=torch.device("cuda", 1)), samples, interval_ms=50):
        sampler_started(args)  # the steps
    assert samples == [(1830.0, 690.65, 700.0, 4), (1980.0, 271.85, 700.0, 0), (1740.0, 687.59, 700.0, 0x44),
                       (345.0, None, 700.0, None)]
    assert args.read_text().split("\n") == [f"--query-gpu={bench.GPU_QUERY}", "--format=csv,noheader,nounits", "-lms",
                                            "50", "-i", "5"]
    summary = bench.summarize_gpu_samples(samples)
    assert summary == dict(gpu_samples=4, sm_mhz=1785.0, power_w=687.59, power_limit_w=700.0,
                           power_capped=pytest.approx(2 / 3), slowdown=pytest.approx(1 / 3))
    assert bench.summarize_gpu_samples([]) == dict(gpu_samples=0, sm_mhz=None, power_w=None, power_limit_w=None,
                                                   power_capped=None, slowdown=None)


def test_gpu_sampling_reports_bad_output_a_dead_sampler_and_a_missing_one(monkeypatch, tmp_path, capsys):
    import types
    import bench
    cuda = types.SimpleNamespace(device=torch.device("cuda", 0))
    args = fake_smi(monkeypatch, tmp_path, ["1830, 690.65 W, 700.00, 0x4"])
    with pytest.raises(ValueError, match=r"cannot read the line '1830, 690.65 W, 700.00, 0x4'"):
        with bench.gpu_sampling(cuda, []):
            sampler_started(args)
    args.unlink()
    fake_smi(monkeypatch, tmp_path, ["No devices were found"], exit_code=6)
    with pytest.raises(RuntimeError, match="nvidia-smi -i 0 exited with 6"):
        with bench.gpu_sampling(cuda, []):
            sampler_started(args, settle_s=2.0)  # it has exited by now
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    samples = []
    with bench.gpu_sampling(cuda, samples):
        pass
    assert samples == [] and "bench gpu_sampling:off (no nvidia-smi on PATH" in capsys.readouterr().out
    with bench.gpu_sampling(types.SimpleNamespace(device=torch.device("cpu")), samples):  # CPU: nothing sampled
        pass
    assert samples == []


class FakeNVML(types.ModuleType):
    """A stand-in for nvidia-ml-py's pynvml: an energy counter in millijoules that steps on each read."""
    class NVMLError(Exception):
        pass

    def __init__(self, readings_mj, supported=True):
        super().__init__("pynvml")
        self.readings, self.supported, self.handles = iter(readings_mj), supported, []

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handles.append(("index", i))
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.handles.append(("uuid", uuid))
        return uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise self.NVMLError("Not Supported")
        return next(self.readings)


def test_gpu_sampling_reads_the_energy_counter_around_the_steps(monkeypatch, tmp_path, capsys):
    """NVML's counter read before and after the block gives its joules; a step's energy and mean power follow."""
    import bench
    args = fake_smi(monkeypatch, tmp_path, ["1830, 690.65, 700.00, 0x0000000000000004"])
    nvml = FakeNVML([5_000_000, 5_000_000, 5_153_450])  # the probe at start-up, then before and after the block
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(bench, "NVML", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    samples, energy = [], []
    with bench.gpu_sampling(types.SimpleNamespace(device=torch.device("cuda", 1)), samples, energy, interval_ms=50):
        sampler_started(args)
    assert nvml.handles == [("index", 5)] and len(energy) == 1
    joules, seconds = energy[0]
    assert joules == pytest.approx(153.45) and 0.5 <= seconds < 30
    assert samples == [(1830.0, 690.65, 700.0, 4)]
    assert bench.summarize_energy([(51.0, 0.075), (49.0, 0.070)], steps=2) == pytest.approx(
        dict(joules_per_step=50.0, energy_power_w=100 / 0.145))
    assert bench.summarize_energy([], steps=2) == dict(joules_per_step=None, energy_power_w=None)
    row = dict(preset="gdn_hybrid", seq_len=2048, variant="", tokens_from="random", tok_per_s=1.3e6, ms_per_step=74.0,
               peak_mem_mib=20000, mfu=0.3, warmup_s=20.0, gpu_samples=1, sm_mhz=1830.0, power_w=690.65,
               power_limit_w=700.0, power_capped=1.0, slowdown=0.0, joules_per_step=51.234, energy_power_w=692.4)
    bench.report_row(row)
    assert capsys.readouterr().out.rstrip().endswith("power_capped:1.00 slowdown:0.00 joules_per_step:51.23 energy_power_w:692")


def test_energy_off_says_why_without_nvidia_ml_py_or_the_counter(monkeypatch, capsys):
    import bench
    cuda = types.SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setenv("PATH", "")  # no nvidia-smi either: the block still runs, with neither figure
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setattr(bench, "NVML", {})
    energy = []
    for _ in range(2):
        with bench.gpu_sampling(cuda, [], energy):
            pass
    out = capsys.readouterr().out
    assert energy == [] and out.count("bench energy:off (no pynvml: pip install nvidia-ml-py): rows carry no joules") == 1
    nvml = FakeNVML([], supported=False)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(bench, "NVML", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8c3e5a4f")
    with bench.gpu_sampling(cuda, [], energy):
        pass
    assert energy == [] and nvml.handles == [("uuid", "GPU-8c3e5a4f")]
    assert "bench energy:off (GPU GPU-8c3e5a4f: NVML total energy: Not Supported)" in capsys.readouterr().out


def test_time_launches_prints_each_call_and_sums_each_launch_over_shapes(monkeypatch, capsys):
    """The explore scripts' sweep helper: FLA's row is printed but never a candidate; launches sum over shapes."""
    import bench
    rounds = iter([{"fla": [0.5, 0.7], (64, 4): [0.3, 0.4, 0.5], (32, 4): [0.2, 0.6, 0.6]},
                   {"fla": [0.9], (64, 4): [0.1], (32, 4): [0.1]}])
    monkeypatch.setattr(bench, "interleaved_times_ms", lambda calls, rounds_: next(rounds))
    summed = {}
    for prefix in ("48x2048", "12x8192"):
        bench.time_launches({}, 3, prefix, lambda name: "FLA" if name == "fla" else "ours BV={} warps={}".format(*name), summed)
    assert summed == pytest.approx({(64, 4): 0.5, (32, 4): 0.7})
    assert bench.best_launch(summed) == "best_launch:64,4"
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["48x2048 FLA: median 600.0 us (min 500.0, max 700.0)",
                       "48x2048 ours BV=64 warps=4: median 400.0 us (min 300.0, max 500.0)",
                       "48x2048 ours BV=32 warps=4: median 600.0 us (min 200.0, max 600.0)"]
    assert len(out) == 6
