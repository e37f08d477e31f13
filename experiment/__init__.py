"""The experiment library under train.py, eval.py and reproduce.py.

errors (the two ways a command stops), encodings (one object per way a series enters a model),
groups and settings (frozen dataclasses, one kind per unit of work, made of groups of fields, from
which the flags, config.json and resume's check derive), models (the one builder of the model a
unit of work computes with, on the meta device too), batches (training windows), costs (FLOPs of
training steps and runs), folders (every file name of a run's, an evaluation's, the sweep's and the
plan's folder), process (torchrun, schedule, random state, loggers), trainer (one training run),
scoring (forecast metrics), baseline_runs (the systems an evaluation selects, and what the
baselines forecast), forecast (eval.py's work), report (tables and figures), sweep (the lr x rank
grid), plan (the report's whole plan), summaries (what a finished command says) and cli (flags from
the settings, one line per mistake).

Builds on qwen_min, lora, flops and data; imports no script. Modules import each other one way:
errors -> encodings -> groups -> settings -> models, batches, folders -> costs, process, scoring,
report -> trainer, baseline_runs -> forecast -> sweep -> plan; summaries and cli stand above them.
"""
