"""data_gen: turn Wikipedia passages into new multiple-choice questions with an LLM.

``sciqa gen`` is :func:`data_gen.commands.run_gen`, its steps in order:

- ``passages``: read the passages file, select the science ones to ask about;
- ``prompts``: a job per question to write, its chat messages and parameters;
- ``generate``: ask every job at the endpoint, parse each reply (``parse``), re-ask
  invalid ones, through ``client`` (limits, retries, ``backends``' structured output),
  ``cache`` (resumable SQLite) and ``batch`` (the OpenAI Batch API, ``--batch``);
- ``postprocess``: filter (duplicates, leaks, ``scorers``' answerability and too-easy
  checks, shortcuts), balance the letters, audit;
- ``commands``: write the questions, the rejects, ``config.yaml`` and ``manifest.json``.

``engine`` gives the endpoint, ``llm.base_url`` or a local server it starts and stops,
through one entry point, :func:`data_gen.engine.serve_llm`; ``sciqa serve-llm`` runs it
alone. ``fake_server`` is a scripted OpenAI-compatible server for tests and benchmarks.
See docs/data_gen.md.
"""
