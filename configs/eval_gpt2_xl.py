# Evaluate OpenAI's gpt2-xl (1558M: n_layer=48, n_head=25, n_embd=1600) on OpenWebText.
# python data/openwebtext/prepare.py, then: python train.py --config configs/eval_gpt2_xl.py
init_from = "gpt2-xl"
dataset = "openwebtext"
out_dir = "out-eval-gpt2-xl"
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
