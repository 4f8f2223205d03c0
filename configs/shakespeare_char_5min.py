# The best char-level Shakespeare in 5 minutes of wall clock on a laptop CPU (start-up, evals
# and the final checkpoint included): the modern recipe, 4 layers x 128, block 128.
# python train.py --config configs/shakespeare_char_5min.py
out_dir = "out-5min"
time_budget = 300  # seconds; the run plans max_iters from its measured speed
eval_interval = 1000
eval_iters = 20
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 32
block_size = 128
batch_order = "epoch"

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

positions = "rope"
norm = "rmsnorm"
qk_norm = True
activation = "relu2"
tie_embeddings = False
logit_softcap = 15.0
zero_init = True

optimizer = "muon"
muon_lr = 0.03
muon_momentum = 0.95
learning_rate = 0.01
embedding_lr = 0.03
head_lr = 0.006
beta1 = 0.8
beta2 = 0.95
weight_decay = 0.0
grad_clip = 0.0

lr_schedule = "wsd"
decay_fraction = 0.4
warmup_iters = 20
min_lr = 0.0

device = "cpu"
dtype = "auto"
compile = False
