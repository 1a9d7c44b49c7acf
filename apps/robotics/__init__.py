"""Vision-language-action policies fine-tuned from pretrained towers (docs/robotics.md).

Modules, one job each:

- ``envs``: the simulated tasks (``make_env``, ``VectorEnv``): the language-conditioned 2-D
  tabletop suite with its scripted expert, instruction templates and held-out paraphrases;
  a pybullet Panda push task; gym-pusht's Push-T (optional);
- ``dataset``: LeRobotDataset v3.0 writer and reader (v2.0/v2.1 read too), statistics;
- ``collect``: scripted-expert demonstrations into a dataset (``python -m apps.robotics.collect``);
- ``normalize``: action / proprio normalisation from a dataset's statistics;
- ``data``: the Lightning data module (frames, action chunks, cached trunk features);
- ``actions``: OpenVLA's 256-bin action tokenizer;
- ``model``: the vision-language encoder (towers, attention pooling, FiLM, spatial softmax);
- ``policies``: the action heads, one folder each (``tokens``, ``l1_chunk``, ``diffusion``);
- ``policy``: encoder + head + adapter, the policy protocol ``predict_chunk``;
- ``chunking``: chunk execution (temporal ensembling, receding, open loop);
- ``evaluation``, ``intervals``, ``report``: closed-loop success with Wilson intervals,
  baselines, speed, GIFs and ``report.md``;
- ``module``, ``train``: the Lightning module and ``python -m apps.robotics.train``;
- ``benchmark``: the ablations over seeds (``python -m apps.robotics.benchmark``);
- ``success``: a learned success detector (final frame + instruction) on labelled rollouts
  (``python -m apps.robotics.success``);
- ``behaviour_cloning``: the plain BC loop the two studies below share (weighted sources);
- ``online``: RoboFuME-style self-improvement from the detector's verdicts, filtered BC and
  AWR (``python -m apps.robotics.online``);
- ``fisher``, ``continual``: task families learned in sequence (naive, EWC with the L1
  head's Fisher, replay, per-family adapters in an ``AdapterBank``) and the adapters merged
  (``python -m apps.robotics.continual``).
"""
