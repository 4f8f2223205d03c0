# Fastest to a good char-level Shakespeare on a laptop CPU: best val loss per wall-clock second.
# Same family as the baby GPT (GPT-2 blocks, AdamW, the standard 90/10 split), but sized for
# the time budget: on a 2-core CPU this 2-layer, 128-wide model trains on 2.3x more tokens per
# second than nanoGPT's 4x128 CPU config and, at lr 1e-2, reaches its final val loss in about a
# quarter of the time (docs/speedrun.png).
# python train.py --config configs/shakespeare_char_cpu_speedrun.py   (~40 s on 2 cores)
# For a ~70 s budget: --max_iters=1050 --lr_decay_iters=1050
out_dir = "out-speedrun"
eval_interval = 100
eval_iters = 10  # 10 x 2048 tokens per split: val loss to about +-0.01, 5% of the run
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 32
block_size = 64

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-2  # tiny models take a far higher rate than the baby GPT's 1e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 1e-3
beta2 = 0.99
warmup_iters = 30

device = "cpu"
dtype = "auto"  # float32 unless the CPU has bf16 matrix units (AMX / AVX512-BF16)
compile = False  # cold compile takes minutes on a laptop CPU; it never pays back here
