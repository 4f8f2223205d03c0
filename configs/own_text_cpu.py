# Your own text on a laptop CPU: one small GPT for any tokenizer, so that char, GPT-2 BPE and
# your own BPE can be compared in bits per byte (README, "Your own text").
# python train.py --config configs/own_text_cpu.py --dataset notes --out_dir out-notes
out_dir = "out-own-text"
eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = False  # ckpt.pt keeps the best val loss

batch_size = 32
block_size = 128  # tokens: a BPE token holds 3-4 characters, so BPE models see further

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.1  # a BPE turns Tiny Shakespeare into ~300k tokens: several epochs in minutes

learning_rate = 2e-3
max_iters = 2500
lr_decay_iters = 2500
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False
