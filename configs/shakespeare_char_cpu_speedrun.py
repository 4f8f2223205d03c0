# Fastest to a good char-level Shakespeare on a laptop CPU: the modern recipe (see README).
out_dir = "out-speedrun"
eval_interval = 1000
eval_iters = 10
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 32
block_size = 64

n_layer = 2
n_head = 4
n_embd = 96
dropout = 0.0

positions = "rope"
norm = "rmsnorm"
qk_norm = True
activation = "relu2"
tie_embeddings = False
logit_softcap = 15.0
zero_init = True

optimizer = "muon"
muon_lr = 0.04
muon_momentum = 0.95
learning_rate = 0.01
embedding_lr = 0.05
head_lr = 0.01
beta1 = 0.8
beta2 = 0.95
weight_decay = 0.0
grad_clip = 0.0

lr_schedule = "wsd"
decay_fraction = 0.4
warmup_iters = 10
max_iters = 200
min_lr = 0.0

device = "cpu"
dtype = "auto"
compile = False
