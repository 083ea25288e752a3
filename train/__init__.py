"""train: k-fold fine-tuning of ``AutoModelForMultipleChoice`` on question + context.

``sciqa train QUESTIONS --out RUN_DIR`` (see docs/train.md). Modules: ``folds`` (the
split), ``dataset`` (encoding), ``model`` (backbone, freezing, LoRA, precision),
``trainer`` (one fold through the HF Trainer), ``run_dir`` (the layout ``infer`` reads),
``commands`` (the command). Only ``folds`` and ``run_dir`` import without torch.
"""
