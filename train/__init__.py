"""train: k-fold fine-tuning of multiple-choice models on question + context.

``sciqa train QUESTIONS --out RUN_DIR`` (see docs/train.md, docs/llm.md). Two model
families on one fold/OOF/run-dir contract: ``AutoModelForMultipleChoice`` encoders
(``model``) and causal LMs trained as option scorers (``causal``). Modules: ``folds``
(the split), ``dataset`` (encoding), ``model`` (encoder backbone, freezing, LoRA,
precision), ``causal`` (causal-LM backbone, loss, LoRA/QLoRA), ``trainer`` (one fold
through the HF Trainer), ``run_dir`` (the layout ``infer`` reads), ``commands`` (the
command). Only ``folds`` and ``run_dir`` import without torch.
"""
