# Fastest to a good char-level Shakespeare on a laptop CPU (full-split val loss <= 1.886, the
# loss nanoGPT's CPU example logs after 2000 steps): the modern recipe (README, "The modern
# recipe") on one 128-wide layer for 210 steps of 32 x 64 tokens. About 10 s on 2 cores,
# start-up and dataset preparation included; benchmarks/vs_nanogpt.py runs the comparison.
# python train.py --config configs/shakespeare_char_cpu_speedrun.py
out_dir = "out-speedrun"
eval_interval = 1000  # evaluate at the start and at the end only
eval_iters = 10
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 32
block_size = 64

n_layer = 1
n_head = 4
n_embd = 128
dropout = 0.0

# the modern recipe: each switch is off (GPT-2) by default
positions = "rope"
norm = "rmsnorm"
qk_norm = True
activation = "relu2"
tie_embeddings = False
logit_softcap = 15.0
zero_init = True

optimizer = "muon"  # Muon for the hidden matrices, AdamW for embeddings and head
muon_lr = 0.03
muon_momentum = 0.95
learning_rate = 0.01  # AdamW: 1-D parameters (none here: RMSNorm has no weights, no biases)
embedding_lr = 0.05
head_lr = 0.01
beta1 = 0.8
beta2 = 0.95
weight_decay = 0.0
grad_clip = 0.0

lr_schedule = "wsd"  # warmup, flat, then linear decay to 0 over the last 40%
decay_fraction = 0.4
warmup_iters = 10
max_iters = 210
min_lr = 0.0

device = "cpu"
dtype = "auto"
compile = False  # a cold compile takes longer than the whole run
