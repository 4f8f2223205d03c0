# Evaluate OpenAI's gpt2-large (774M: n_layer=36, n_head=20, n_embd=1280) on OpenWebText.
# python data/openwebtext/prepare.py, then: python train.py --config configs/eval_gpt2_large.py
init_from = "gpt2-large"
dataset = "openwebtext"
out_dir = "out-eval-gpt2-large"
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
