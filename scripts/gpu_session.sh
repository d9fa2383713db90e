#!/usr/bin/env bash
# One lent-GPU session, steps in the order given:
#   tests            FLA custom-op parity against the torch reference (tests/test_gpu.py; TESTS_K narrows it)
#   bench            the short conv alone at W = 4 and 0 (scripts/short_conv_bench.py: its tile sweep), then bench.py
#                    at seq 2048: gdn_hybrid (default) vs its path before the gdn_core ops (fla_function), with
#                    profiles, and attention
#   long             bench.py at seq 4096 and 8192, gdn_hybrid and attention
#   ablations        bench.py at SEQ_LENS (default 2048 8192): gdn_hybrid with and without the short conv
#                    (model.conv_size=0) and the output gate (model.gdn_output_gate=false), then attention
#   table            bench.py: gdn_hybrid, gdn_hybrid_lean and attention at 2048, 4096 and 8192 in one process, timed
#                    interleaved in 3 rounds (issue 7's table)
#   energy           bench.py at SEQ_LENS (default 2048 8192): gdn_hybrid, gdn_hybrid_lean and attention interleaved in 3
#                    rounds, each row with SM clock, power-capped share and joules per step (NVML energy counter); then
#                    FLA's three forward kernels against the one pass (scripts/gdn_fwd_fused_explore.py) in mJ a call
#   norm             the GDN output norm alone in its formulations (scripts/gdn_out_norm_bench.py), then a lean profile at
#                    8192: the output norm should be one inductor kernel per layer (docs/perf.md runs BC-BE)
#   glue             the attention block's q/k norm + RoPE with RoPE's tables traced into the graph, from the rope_table
#                    op (the trainer) and from an eager table, and q|k|v split by columns (the trainer before run PA):
#                    agreement, then times (scripts/attention_glue_bench.py)
#   warmup           the warm-up by phase (scripts/warmup_profile.py): gdn_hybrid cold, then warm caches; attention cold
#   record:<model>   a 120 s training run (seed SEED, default 1337) on corpus shards with plain/sliding(64)/stateful
#                    eval (EVAL_MODES) + int6 export, then its quantization gap split by tensor group
#                    (scripts/quant_gap.py: the weights are too large to fetch; QUANT_GAP=0 skips it,
#                    QUANT_GAP_TRY="gdn.out:8 matrix_clip_k=10" adds its --try re-exports)
#   reseed:<record>  that record folder's own train_gpt.py and config.yaml at seed SEED (records.py rerun; DATA must be
#                    the record's data), then the split as for record: with the working tree's quant_gap.py; the
#                    run's log and results.json land in $OUT for `records.py add <record> --results ...`
#   sweep            EXPERIMENT (default gdn_vs_attention: 2 models) x SEEDS (default 1,2) x 60 s (sweep.py), with
#                    its report; SWEEP_ARGS: more overrides (default export.compressors=[lzma]; e.g. export=none)
#   qwen             frozen_context.py tiers on a 24-layer Qwen3.5-shaped random-init model (context 4096)
#   qwen-check       frozen_context.py's built-in checks on the tiny Qwen3.5 default, on CUDA (the image's transformers)
#   equiv            (nvidia-h200-x2) 50 steps of the 8-GPU recipe on 2 GPUs vs 1 GPU with 8x accumulation
# Console lines pass grep line by line and long steps keep their whole log under $OUT, so a call cut at the device
# tool's time limit still returns what it did.
# carry: .gpu (../shared/device + the brotli and nvidia-ml-py wheels beside its own, which setup.sh installs), .corpus (debian_docs.jsonl.xz), data/tokenizers
# DATA: corpus_sp8192_shuffled (default: train documents cut into 8,192-token pieces, shuffled) or corpus_sp8192
# (input order; the 2026-11-22 records and sweep used it, see README "Data" on why the shuffled build is the default).
set -uo pipefail
source .gpu/device/setup.sh || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-120}
DATA=${DATA:-corpus_sp8192_shuffled}
case $DATA in
  corpus_sp8192) dataset=debian_docs_sp8192 order="" ;;
  corpus_sp8192_shuffled) dataset=debian_docs_sp8192_shuffled order="--shuffle-seed 1 --piece-tokens 8192" ;;
  *) echo "DATA=$DATA: expected corpus_sp8192 or corpus_sp8192_shuffled" >&2; exit 2 ;;
esac
shards() {
  [ -f data/datasets/$dataset/meta.json ] || python3 data/build_shards.py --input .corpus/debian_docs.jsonl.xz \
    --output-dir data/datasets/$dataset --tokenizer data/tokenizers/debian_docs_8192_bpe.model \
    --val-docs 1000 --workers 12 --no-progress $order > $OUT/build.log 2>&1
}
shards &
build=$!
train_lines() { grep --line-buffered -E "^(model|warmup|step|train_time|export|eval|bpb|final|bytes|quant|stopping)|Error|error"; }
after_run() {  # a record run's log and results into $OUT, then its quantization gap split (QUANT_GAP=0: none)
  cp "/tmp/runs/$1.txt" "/tmp/runs/$1.results.json" $OUT/ 2>/dev/null
  [ "${QUANT_GAP:-1}" = 0 ] || python3 scripts/quant_gap.py "/tmp/runs/$1" --out "$OUT/quant_gap_$1.json" \
    ${QUANT_GAP_TRY:+--try $QUANT_GAP_TRY} 2>&1 | grep --line-buffered -E "^quant_gap|Error"
}
for step in "$@"; do
  case $step in
    tests) timeout ${TESTS_TIMEOUT:-480} python3 -m pytest -q -x tests/test_gpu.py ${TESTS_K:+-k "$TESTS_K"} \
             > $OUT/gpu_tests.log 2>&1; tail -n 12 $OUT/gpu_tests.log ;;
    bench) for w in 4 0; do python3 scripts/short_conv_bench.py --conv-size $w 2>&1 | grep --line-buffered -E "^short_conv (B=|fla|best|forward)|Error"; done
           python3 bench.py --presets gdn_hybrid --seq-lens 2048 --steps 20 --warmup 4 --out $OUT/bench_hybrid.json \
             --profile-dir $OUT --variants "" "gdn_core=fla_function" 2>&1 | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)"
           python3 bench.py --presets attention --seq-lens 2048 --steps 20 --warmup 4 --out $OUT/bench_attention.json \
             2>&1 | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)" ;;
    long) python3 bench.py --presets gdn_hybrid attention --seq-lens 4096 8192 --steps 12 --warmup 3 \
            --out $OUT/bench_long.json 2>&1 | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)" ;;
    ablations) for seq in ${SEQ_LENS:-2048 8192}; do
        python3 bench.py --presets gdn_hybrid --seq-lens $seq --steps 15 --warmup 3 --out $OUT/bench_ablations_$seq.json \
          --variants "" model.conv_size=0 model.gdn_output_gate=false "model.conv_size=0 model.gdn_output_gate=false" \
          2>&1 | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)"
        python3 bench.py --presets attention --seq-lens $seq --steps 15 --warmup 3 --out $OUT/bench_attention_$seq.json \
          2>&1 | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)"
      done ;;
    table) python3 bench.py --presets gdn_hybrid gdn_hybrid_lean gdn_hybrid_lean_gva attention --seq-lens 2048 4096 8192 --steps 10 --warmup 3 \
             --interleave 3 --out $OUT/bench_table.json 2>&1 | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)" ;;
    energy) for seq in ${SEQ_LENS:-2048 8192}; do
        python3 bench.py --presets gdn_hybrid gdn_hybrid_lean attention --seq-lens $seq --steps 20 --warmup 3 \
          --interleave 3 --out $OUT/bench_energy_$seq.json 2>&1 | grep --line-buffered -E "^(bench|\||Traceback|[A-Za-z]*Error)"
      done
      python3 scripts/gdn_fwd_fused_explore.py --rounds 3 --shapes 48x2048 --bv 64 --warps 4 --stages 3 \
        --energy-calls 2500 2>&1 | grep --line-buffered -E "energy|Error" ;;
    norm) python3 scripts/gdn_out_norm_bench.py 2>&1 | grep --line-buffered -E "^(gdn_out_norm| )|Error"
          python3 bench.py --presets gdn_hybrid_lean --seq-lens 8192 --steps 15 --warmup 3 --profile-dir $OUT 2>&1 \
            | grep --line-buffered -E "^(bench|Traceback|[A-Za-z]*Error)"
          grep -hE "rms_norm" $OUT/profile_gdn_hybrid_lean_8192.txt | cut -c1-160 ;;
    glue) python3 scripts/attention_glue_bench.py 2>&1 | grep --line-buffered -E "^attention_glue|Error" ;;
    warmup) n=0  # fresh cache directories: cold starts (carry no .corpus, or the shard build competes for the CPU)
            for run in gdn_hybrid:/tmp/warmup_hybrid gdn_hybrid:/tmp/warmup_hybrid attention:/tmp/warmup_attention; do
              n=$((n + 1))
              python3 scripts/warmup_profile.py --preset ${run%%:*} --cache-dir ${run#*:} > $OUT/warmup_$n.log 2>&1
              grep --line-buffered -E "^warmup|Error" $OUT/warmup_$n.log
            done ;;
    record:*) wait $build; m=${step#record:}; run=${m}_${SECONDS_PER_RUN}s_seed${SEED:-1337}
      torchrun --standalone --nproc_per_node=1 train_gpt.py model=$m data=$DATA budget=1gpu_2min \
        train.max_wallclock_seconds=$SECONDS_PER_RUN "eval.modes=[${EVAL_MODES:-plain,sliding,stateful}]" eval.stride=64 \
        "export.compressors=[${COMPRESSORS:-lzma}]" train.seed=${SEED:-1337} run.log_dir=/tmp/runs run.run_id=$run 2>&1 \
        | train_lines
      after_run "$run" ;;
    reseed:*) wait $build; record=${step#reseed:}; run=$(basename "$record")_seed${SEED:?reseed needs SEED}
      cmd=$(python3 records.py rerun "$record" --seed $SEED --log-dir /tmp/runs --run-id "$run") || exit 2
      echo "$cmd"
      eval "$cmd" 2>&1 | train_lines
      after_run "$run" ;;
    sweep) wait $build
      python3 sweep.py -m experiment=${EXPERIMENT:-gdn_vs_attention} data=$DATA train.seed=${SEEDS:-1,2} ${SWEEP_ARGS:-export.compressors=[lzma]} \
        launch.sweep_dir=/tmp/sweep 2>&1 | grep --line-buffered -E "sweep_job|Error|error"
      python3 report.py /tmp/sweep && tar -czf $OUT/sweep_report.tgz -C /tmp/sweep report.md report.csv groups.csv \
        $(cd /tmp/sweep && ls *.png) $(cd /tmp/sweep && ls */*.txt */*.results.json 2>/dev/null) ;;
    qwen) python3 frozen_context.py tiers --arch qwen3_5 --device cuda --dtype bf16 --layers 24 --hidden 2048 \
            --intermediate 6144 --heads 8 --kv-heads 2 --head-dim 256 --linear-heads 16 --linear-v-heads 16 \
            --linear-head-dim 128 --vocab 248320 --context 4096 --decision 256 --gdn-decay-init mamba \
            --out $OUT/qwen_tiers.json > $OUT/qwen.log 2>&1; tail -n 40 $OUT/qwen.log ;;
    qwen-check) python3 frozen_context.py --arch qwen3_5 --device cuda > $OUT/qwen_check.log 2>&1
                tail -n 30 $OUT/qwen_check.log ;;
    equiv) wait $build
      common="model=gdn_hybrid data=$DATA budget=8xh100_steps train.max_steps=50 train.log_every=1 export=none"
      torchrun --standalone --nproc_per_node=1 train_gpt.py $common run.log_dir=/tmp/runs run.run_id=equiv_1gpu \
        train.micro_batch_seqs=48 > /dev/null 2>&1
      torchrun --standalone --nproc_per_node=2 train_gpt.py $common run.log_dir=/tmp/runs run.run_id=equiv_2gpu \
        train.micro_batch_seqs=48 > /dev/null 2>&1
      cp /tmp/runs/equiv_*.txt $OUT/ 2>/dev/null
      python3 - <<'PY'
import re
def losses(p): return {int(m[1]): float(m[2]) for m in re.finditer(r"^step:(\d+)/\d+ train_loss:([\d.]+).*tok/s:(\d+)", open(p).read(), re.M)}
a, b = losses("/tmp/runs/equiv_1gpu.txt"), losses("/tmp/runs/equiv_2gpu.txt")
print("max |loss diff| over", len(a), "steps:", max(abs(a[s] - b[s]) for s in a))
PY
      grep -h "^train_time" /tmp/runs/equiv_*.txt ;;
  esac
done
