# Finetune GPT-2 (124M) on Tiny Shakespeare with LoRA, on a laptop CPU: rank-8 adapters on
# every attention and MLP projection train (1.18M parameters) while GPT-2's 124M weights stay
# frozen. Needs the hf and bpe extras; init_from may also be a local Hugging Face GPT-2
# directory or one of your nanogpt runs (its out_dir).
# python train.py --config configs/finetune_shakespeare_lora.py
out_dir = "out-shakespeare-lora"
eval_interval = 20  # a 60-token GPT-2 sample takes about 4 s on 2 CPU cores
eval_iters = 20
always_save_checkpoint = False

dataset = "shakespeare"
init_from = "gpt2"
block_size = 256

finetune = "lora"
lora_rank = 8
lora_alpha = 16.0
lora_dropout = 0.05

# 1 sequence x 8 micro-steps x 256 tokens = 2,048 tokens per step, as nanoGPT's finetune
# (batch_size 1) but shorter sequences
batch_size = 1
gradient_accumulation_steps = 8
max_iters = 100

learning_rate = 1e-3  # adapters start at zero and want a higher rate than a full finetune
warmup_iters = 10
min_lr = 1e-4
sample_tokens = 60  # off by default for GPT-2-sized models; a short one here

device = "cpu"
