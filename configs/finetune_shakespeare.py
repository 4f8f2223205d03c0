# Finetune OpenAI's GPT-2 XL (1.5B) on Tiny Shakespeare, as nanoGPT does. Needs a GPU with
# enough memory (or init_from = "gpt2" for the 124M model), the hf and bpe extras, and
# python data/shakespeare/prepare.py (train.py prepares it too when it is missing).
# python train.py --config configs/finetune_shakespeare.py
out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40

dataset = "shakespeare"
init_from = "gpt2-xl"  # the largest GPT-2; or a local Hugging Face GPT-2 directory

# only save checkpoints if the validation loss improves
always_save_checkpoint = False

# the number of examples per iter:
# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter
# shakespeare has 301,966 tokens, so 1 epoch ~= 9.2 iters
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at constant LR
learning_rate = 3e-5
decay_lr = False
min_lr = 3e-6  # unused without decay, but may not exceed learning_rate
