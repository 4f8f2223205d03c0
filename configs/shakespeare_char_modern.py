# nanoGPT's "baby GPT" shape (6 layers x 384, block 256, batch 64, dropout 0.2) trained with the
# modern recipe, for one GPU: RoPE, RMSNorm, QK-norm, ReLU^2, untied head, logit soft-cap,
# zero-initialised projections, Muon for the hidden matrices, warmup-stable-decay.
# python train.py --config configs/shakespeare_char_modern.py
# (not yet measured on a GPU: the learning rates are the CPU recipe's, scaled for this size)
out_dir = "out-shakespeare-char-modern"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 64
block_size = 256
batch_order = "epoch"

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

positions = "rope"
norm = "rmsnorm"
qk_norm = True
activation = "relu2"
tie_embeddings = False
logit_softcap = 15.0
zero_init = True

optimizer = "muon"
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 0.006
embedding_lr = 0.01
head_lr = 0.003
beta1 = 0.8
beta2 = 0.95
weight_decay = 0.0
grad_clip = 0.0

lr_schedule = "wsd"
decay_fraction = 0.4
warmup_iters = 100
max_iters = 3000
min_lr = 0.0
