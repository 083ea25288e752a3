"""train: k-fold fine-tuning of multiple-choice models on question + context.

``sciqa train QUESTIONS --out RUN_DIR`` (see docs/train.md, docs/llm.md). Two model
families on one fold/OOF/run-dir contract. Modules, from the command down:

* ``commands``: ``run_train`` (the only one that takes the whole config) and
  ``train_one`` (one fold: encode, train, save, score);
* ``causal``: causal LMs as option scorers (backbone, loss, LoRA/QLoRA);
* ``trainer``: one fold through the HF Trainer (early stopping, best epoch, OOF logits);
* ``model``: encoder backbones (``AutoModelForMultipleChoice``, freezing, LoRA, precision);
* ``dataset``: questions -> features; ``folds``: the split; ``run_dir``: the layout
  ``infer`` reads; ``trackers``: ``train.report_to``.

Below ``run_train`` a function takes the sections it reads (``TrainConfig``,
``CausalLMConfig``) and the single values (``backbone``, ``seed``) by name. ``model``,
``trainer`` and ``causal`` import torch; ``commands`` imports them inside its functions.
"""
