"""Training, for `finetune` and `train-head`: the one epoch loop (`loop`), the validation
split and schedule (`split`), the linear branch's SVM fit (`linear_fit`), and fine-tuning's
window model and task (`window_model`, `window_task`).
"""
