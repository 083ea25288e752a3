"""``causal_lm.offload = layers``: ``layout`` (a model's parts), ``split`` (the one-time
per-layer safetensors), ``stream`` (running a model one loaded layer at a time),
``predictor`` (the causal predictor over a streamed model)."""
