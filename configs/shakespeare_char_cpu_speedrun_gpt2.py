# Fastest to a good char-level Shakespeare on a laptop CPU: best val loss per wall-clock second.
# Same family as the baby GPT (GPT-2 blocks, AdamW, the standard 90/10 split), but sized for
# the time budget: a 2-layer, 96-wide model at a high learning rate, evaluated only 4 times.
# On a 2-core AVX2 CPU it reached val 1.877 in 32 s of total wall time (docs/speedrun.png).
# python train.py --config configs/shakespeare_char_cpu_speedrun.py
# For a ~65 s budget: --max_iters=1450 --lr_decay_iters=1450 --eval_interval=290 (val 1.735)
out_dir = "out-speedrun"
eval_interval = 240  # each eval costs ~0.4 s; the last one, at max_iters, is what counts
eval_iters = 10  # 10 x 2048 tokens per split: val loss to about +-0.01, 5% of the run
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 32
block_size = 64

n_layer = 2
n_head = 4
n_embd = 96  # 1.7x the tokens/s of 128 wide on 2 cores, and enough capacity for 30 s
dropout = 0.0

learning_rate = 1.2e-2  # tiny models take a far higher rate than the baby GPT's 1e-3
max_iters = 720
lr_decay_iters = 720
min_lr = 1e-3
beta2 = 0.99
warmup_iters = 30

device = "cpu"
dtype = "auto"  # float32 unless the CPU has bf16 matrix units (AMX / AVX512-BF16)
compile = False  # cold compile takes minutes on a laptop CPU; it never pays back here
