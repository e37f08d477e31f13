"""The experiment library under train.py, eval.py and reproduce.py: settings (one dataclass per kind of
run, from which the flags, config.json and resume's check derive), batches (training windows),
costs (FLOPs of steps, runs and evaluations, planned on the meta device), runfolder (what a run
folder holds, its lock and the run's id), trainer (one training run), scoring (forecast metrics), forecast (eval.py's work), report (tables and figures), sweep
(the lr x rank grid), plan (the report's whole plan) and cli (flags from the settings, one line per
mistake).

Builds on qwen_min, lora, flops and data; imports no script. Modules import each other one way:
settings -> batches, costs, runfolder -> scoring, report -> trainer, forecast -> sweep, plan -> cli.
"""
