# Evaluate OpenAI's gpt2 (124M: n_layer=12, n_head=12, n_embd=768) on OpenWebText.
# python data/openwebtext/prepare.py, then: python train.py --config configs/eval_gpt2.py
init_from = "gpt2"
dataset = "openwebtext"
out_dir = "out-eval-gpt2"
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
