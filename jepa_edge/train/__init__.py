"""Training agents (needs torch): `jepa-edge train` and the studies' training runs, nothing else.

``config``      RunConfig, presets and ``agent_config`` (the one way to build a run's config)
``loop``        the training loop (``train``, ``ensure_trained``)
``model``, ``jepa``  the encoder and the JEPA objective; ``clips`` samples training clips on the device
``teacher``     student training: alignment to a frozen teacher through W
``checkpoint``  agent and train-state files; ``log`` the run's log.jsonl and train_state.json
``evaluate``    the held-out state probe run during training; ``flops`` counted FLOPs of one step
``pool``        several runs trained at once in spawned processes

Using a finished agent (latents, calib, probes) lives in ``jepa_edge.agents``.
"""
