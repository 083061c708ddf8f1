"""Use trained agents in PyTorch (needs torch): everything that reads a finished run directory.

``latents``    paired world moments and an agent's latents of them; untrained encoders as controls
``calibrate``  the `jepa-edge calib` and `jepa-edge probe` drivers: agents' latents → ``calib`` (W, probes)
``untrained``  a random-init agent of any preset, saved like a trained one (export / bench sizes)
``eager``      PyTorch eager as a benchmark backend (the reference the exported model replaces)

Training itself lives in ``jepa_edge.train``; the torch-free math of W in ``jepa_edge.calib``.
"""
