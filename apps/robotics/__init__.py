"""Vision-language-action policies fine-tuned from pretrained towers (issue #22).

Modules, one job each: ``envs`` (the simulated task suite: ``make_env``, ``VectorEnv``, the
language-conditioned 2-D tabletop with its scripted expert, instruction templates and held-out
paraphrases). The dataset format, action tokenizer, policies and entry points arrive in later
steps of the issue.
"""
