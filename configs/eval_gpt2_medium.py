# Evaluate OpenAI's gpt2-medium (350M: n_layer=24, n_head=16, n_embd=1024) on OpenWebText.
# python data/openwebtext/prepare.py, then: python train.py --config configs/eval_gpt2_medium.py
init_from = "gpt2-medium"
dataset = "openwebtext"
out_dir = "out-eval-gpt2-medium"
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
