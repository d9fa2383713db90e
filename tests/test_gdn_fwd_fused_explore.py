"""scripts/gdn_fwd_fused_explore.py's kernel in Triton's CPU interpreter (TRITON_INTERPRET=1, set before Triton is
imported, hence a subprocess) against the trainer's fp32 torch reference of the gated delta rule: the output and the
final state, every chunk's starting state h (the reference's final state after each whole-chunk prefix), w and v_new,
with partial last chunks, K != V, V in slices, a carried initial state and a fast decay."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INTERPRETED = r'''
import sys
import torch
sys.path.insert(0, "scripts")
import gdn_fwd_fused_explore as ex
import train_gpt as tg
torch.manual_seed(0)
LN2 = 0.6931471805599453
rel = lambda a, b: ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()  # 0 for a zero state
# (B, T, H, K, V, chunk, V slice, initial state, decay); the last decays fast, as trained gates can
for B, T, H, K, V, BT, BV, with_h0, decay in [(2, 100, 2, 32, 16, 64, 16, False, 0.3), (1, 40, 3, 16, 32, 16, 16, True, 0.3),
                                               (1, 64, 2, 16, 16, 32, 16, True, 4.0)]:
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(2))
    v, beta, gate = torch.randn(B, T, H, V), torch.rand(B, T, H), -torch.rand(B, T, H) * decay  # gate: natural log
    N = -(-T // BT)
    padded = torch.nn.functional.pad(gate, (0, 0, 0, N * BT - T))
    g = (padded.view(B, N, BT, H).cumsum(2).view(B, N * BT, H)[:, :T] / LN2).contiguous()  # log2, cumulative per chunk
    h0 = torch.randn(B, H, K, V) if with_h0 else None
    A = ex.solved_chunks(k, beta, g, BT)
    scale = K ** -0.5
    w, h, v_new, o, ht = ex.fwd_fused(q, k, v, beta, g, A, scale, h0, True, BV=BV)
    o_ref, ht_ref = tg.gated_delta_rule_torch(q, k, v, gate, beta, scale, h0, BT)
    errs = dict(o=rel(o, o_ref), ht=rel(ht, ht_ref))
    for n in range(N):  # chunk n starts from the state after the first n chunks
        start = (h0 if h0 is not None else torch.zeros(B, H, K, V)) if n == 0 else \
            tg.gated_delta_rule_torch(q[:, :n * BT], k[:, :n * BT], v[:, :n * BT], gate[:, :n * BT], beta[:, :n * BT],
                                      scale, h0, BT)[1]
        errs[f"h{n}"] = rel(h[:, n], start)
    Ab = A.transpose(1, 2)  # [B, H, T, BT]: row t holds its chunk's row of A
    w_ref, u_ref = torch.empty_like(w), torch.empty_like(v)
    for n in range(N):
        sl = slice(n * BT, min((n + 1) * BT, T))
        An = Ab[:, :, sl, : sl.stop - sl.start]
        w_ref[:, sl] = (An @ (k[:, sl] * (beta[:, sl] * g[:, sl].exp2()).unsqueeze(-1)).transpose(1, 2)).transpose(1, 2)
        u_ref[:, sl] = (An @ (v[:, sl] * beta[:, sl].unsqueeze(-1)).transpose(1, 2)).transpose(1, 2)
        u_ref[:, sl] -= (w_ref[:, sl].transpose(1, 2) @ h[:, n]).transpose(1, 2)
    errs["w"], errs["v_new"] = rel(w, w_ref), rel(v_new, u_ref)
    for name, err in errs.items():
        assert err < 1e-4, (B, T, H, K, V, BT, BV, name, err)
    print(B, T, H, K, V, BT, BV, " ".join(f"{n}={e:.1e}" for n, e in errs.items()))
'''


def test_fused_forward_matches_torch_reference_in_triton_interpreter():
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 3, proc.stdout
